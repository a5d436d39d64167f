"""C helper programs for the LD_PRELOAD shim tests (test_preload_*.py).

`probe` binds a socket and prints the address it got, in the ways the shim must
handle (IPv4, IPv6, IPV6_V6ONLY, first call from 16 threads or from a signal
handler); `gai` runs a fixed set of getaddrinfo queries and prints the lists.
Test modules load it with `pytest_plugins = ["integration.preload_helpers"]`, so the
`cprogs` fixture compiles both once per session.
"""

import pytest
from conftest import run_captured

PROBE_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Binds a stream socket to addr:0 and writes "OK <bound ip>" or "ERR <errno>". */
static void bind_probe(int family, const char *addr, int v6only, char *out, size_t n)
{
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0) { snprintf(out, n, "ERR %d", errno); return; }
    int one = 1;
    if (v6only && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) {
        snprintf(out, n, "ERR setsockopt %d", errno); close(fd); return;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&ss;
        s->sin_family = AF_INET;
        inet_pton(AF_INET, addr, &s->sin_addr);
        len = sizeof *s;
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
        s->sin6_family = AF_INET6;
        inet_pton(AF_INET6, addr, &s->sin6_addr);
        len = sizeof *s;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
        snprintf(out, n, "ERR %d", errno); close(fd); return;
    }
    len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof ip);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof ip);
    snprintf(out, n, "OK %s", ip);
    close(fd);
}

#define NTHREADS 16
static pthread_barrier_t barrier;
static char results[NTHREADS][128];
static void *thread_main(void *arg)
{
    long i = (long)arg;
    pthread_barrier_wait(&barrier);
    bind_probe(AF_INET, "127.0.0.1", 0, results[i], sizeof results[i]);
    return NULL;
}

static char handler_result[128];
static void on_usr1(int sig)
{
    (void)sig;
    bind_probe(AF_INET, "127.0.0.1", 0, handler_result, sizeof handler_result);
}

int main(int argc, char **argv)
{
    char out[256];
    if (argc < 2) {                       /* the mapping test: fastest path */
        bind_probe(AF_INET, "127.0.0.1", 0, out, sizeof out);
    } else if (!strcmp(argv[1], "bind4")) {
        bind_probe(AF_INET, argv[2], 0, out, sizeof out);
    } else if (!strcmp(argv[1], "bind6")) {
        bind_probe(AF_INET6, argv[2], 0, out, sizeof out);
    } else if (!strcmp(argv[1], "bind6only")) {
        bind_probe(AF_INET6, argv[2], 1, out, sizeof out);
    } else if (!strcmp(argv[1], "threads")) {
        /* NTHREADS threads race to make the first intercepted call. */
        pthread_t t[NTHREADS];
        pthread_barrier_init(&barrier, NULL, NTHREADS);
        for (long i = 0; i < NTHREADS; i++)
            pthread_create(&t[i], NULL, thread_main, (void *)i);
        for (int i = 0; i < NTHREADS; i++)
            pthread_join(t[i], NULL);
        snprintf(out, sizeof out, "%s", results[0]);
        for (int i = 1; i < NTHREADS; i++)
            if (strcmp(results[i], results[0]) != 0)
                snprintf(out, sizeof out, "MISMATCH %s / %s", results[0], results[i]);
    } else if (!strcmp(argv[1], "signal")) {
        /* The very first intercepted call happens inside a signal handler. */
        signal(SIGUSR1, on_usr1);
        raise(SIGUSR1);
        snprintf(out, sizeof out, "%s", handler_result);
    } else {
        fprintf(stderr, "usage\n");
        return 2;
    }
    puts(out);
    return 0;
}
"""

GAI_C = r"""
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct query { const char *node, *service; int family, socktype, flags; };
static const struct query queries[] = {
    {"localhost", "80", AF_UNSPEC, 0, 0},
    {"localhost", "http", AF_INET, SOCK_STREAM, 0},
    {"localhost", "8080", AF_INET6, 0, 0},
    {NULL, "80", AF_UNSPEC, 0, AI_PASSIVE},
    {"127.0.0.1", "443", AF_INET, SOCK_DGRAM, AI_CANONNAME},
    {"", "81", AF_UNSPEC, SOCK_STREAM, 0},
    {"localhost", "no-such-service-cmux", AF_UNSPEC, 0, 0},
    {"LocalHost", NULL, AF_UNSPEC, SOCK_STREAM, AI_ADDRCONFIG},
};

int main(int argc, char **argv)
{
    int loops = argc > 1 ? atoi(argv[1]) : 1;
    size_t nq = sizeof queries / sizeof queries[0];
    for (int loop = 0; loop < loops; loop++) {
        for (size_t q = 0; q < nq; q++) {
            struct addrinfo hints, *res = NULL;
            memset(&hints, 0, sizeof hints);
            hints.ai_family = queries[q].family;
            hints.ai_socktype = queries[q].socktype;
            hints.ai_flags = queries[q].flags;
            int rc = getaddrinfo(queries[q].node, queries[q].service, &hints, &res);
            if (loop == 0)
                printf("query %zu rc=%d", q, rc);
            for (struct addrinfo *ai = res; rc == 0 && ai; ai = ai->ai_next) {
                char ip[INET6_ADDRSTRLEN] = "?";
                int port = -1;
                socklen_t want = ai->ai_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                           : sizeof(struct sockaddr_in);
                if (ai->ai_family == AF_INET) {
                    struct sockaddr_in *s = (struct sockaddr_in *)ai->ai_addr;
                    inet_ntop(AF_INET, &s->sin_addr, ip, sizeof ip);
                    port = ntohs(s->sin_port);
                } else if (ai->ai_family == AF_INET6) {
                    struct sockaddr_in6 *s = (struct sockaddr_in6 *)ai->ai_addr;
                    inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof ip);
                    port = ntohs(s->sin6_port);
                }
                if (loop == 0)
                    printf(" | %d/%d/%d %s %d len=%s canon=%s", ai->ai_family,
                           ai->ai_socktype, ai->ai_protocol, ip, port,
                           ai->ai_addrlen == want ? "ok" : "BAD",
                           ai->ai_canonname ? ai->ai_canonname : "-");
            }
            if (loop == 0)
                printf("\n");
            if (rc == 0)
                freeaddrinfo(res);
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="session")
def cprogs(tmp_path_factory):
    """The C helper programs, compiled with the system compiler."""
    out = tmp_path_factory.mktemp("preload-cprogs")
    progs = {}
    for name, src in (("probe", PROBE_C), ("gai", GAI_C)):
        (out / f"{name}.c").write_text(src)
        cc = run_captured(
            [
                "cc",
                "-O1",
                "-g",
                "-Wall",
                "-Werror",
                "-pthread",
                "-o",
                str(out / name),
                str(out / f"{name}.c"),
            ],
            timeout=120,
        )
        assert cc.returncode == 0, cc.stderr
        progs[name] = str(out / name)
    return progs
