#ifndef SDS_CPROTOBUFC_SHIM_H
#define SDS_CPROTOBUFC_SHIM_H
#include <protobuf-c/protobuf-c.h>
#endif
