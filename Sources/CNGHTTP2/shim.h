#ifndef SDS_CNGHTTP2_SHIM_H
#define SDS_CNGHTTP2_SHIM_H
#include <nghttp2/nghttp2.h>
#endif
