#ifndef SDS_CLINUX_SHIM_H
#define SDS_CLINUX_SHIM_H
// Linux-only interfaces the Glibc module does not bring in: epoll, signalfd.
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/inotify.h>
#include <signal.h>
#include <malloc.h>

// accept4 is a GNU extension hidden without _GNU_SOURCE; declare it so Swift sees it.
extern int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);

static inline int sds_accept_nonblocking(int fd) {
    return accept4(fd, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

// SO_PEERCRED's struct ucred needs _GNU_SOURCE in <sys/socket.h>; read it here so Swift sees three plain integers.
struct sds_peer_credentials { int pid; unsigned int uid; unsigned int gid; };
static inline int sds_peer_credentials(int fd, struct sds_peer_credentials *out) {
    struct { int pid; unsigned int uid; unsigned int gid; } cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, 17 /* SO_PEERCRED */, &cred, &len) != 0) return -1;
    out->pid = cred.pid; out->uid = cred.uid; out->gid = cred.gid;
    return 0;
}

// glibc's malloc tuning (mallopt's constants are macros of <malloc.h>, which Glibc's module does not export).
static inline int sds_malloc_one_arena(void) { return mallopt(M_ARENA_MAX, 1); }
#endif
