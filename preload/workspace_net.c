/*
 * libworkspace_net.so -- LD_PRELOAD shim that moves a process's loopback
 * networking onto its workspace's own loopback address.
 *
 * Compatible with cmux-proxy's ldpreload shim:
 *
 *   workspace name  -> N: trailing ASCII decimal digits of the last '/'
 *                      component (must fit in uint32, else the name is invalid
 *                      and the shim stays inactive); otherwise FNV-1a 32 over
 *                      the component's bytes, ASCII-lowercased, & 0xFFFF.
 *   N               -> 127.18.(N >> 8 & 255).(N & 255)
 *
 * Must agree bit for bit with cmux_gevent/workspace.py (tested on 1,000+ names).
 *
 * Detection (once per process, on the first intercepted call):
 *   CMUX_PRELOAD_DISABLE=<non-empty, not "0">  -> inactive
 *   CMUX_WORKSPACE_INTERNAL=<name> (non-empty)  -> that name (last component)
 *   else the CWD: the component right below $CMUX_WORKSPACE_ROOT (default
 *   /root) if it starts with "workspace-", at any depth below it.
 *
 * Rewrites while active:
 *   bind     0.0.0.0 / 127.0.0.1            -> workspace IP (same port)
 *   bind     :: / ::1 (and their v4-mapped)  -> ::ffff:<workspace IP>
 *   connect  127.0.0.1 / 0.0.0.0             -> workspace IP
 *   connect  ::1 / :: (and v4-mapped)        -> ::ffff:<workspace IP>
 *   getaddrinfo("localhost" | "127.0.0.1" | NULL | "") -> workspace IP
 *
 * An IPV6_V6ONLY socket cannot use a v4-mapped address: bind fails with
 * EADDRNOTAVAIL and connect with ENETUNREACH instead of silently using the
 * host-wide :: / ::1.
 *
 * CMUX_PRELOAD_LOG=<non-empty, not "0"> writes one line per rewrite to stderr.
 *
 * Init is lock-free (atomics only), so it is safe from any thread and from
 * signal handlers; bind/connect never allocate.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* bind and connect share one signature, so one interposer serves both. */
typedef int (*sockaddr_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*getaddrinfo_fn)(const char *, const char *,
                              const struct addrinfo *, struct addrinfo **);

enum real_id { REAL_BIND, REAL_CONNECT, REAL_GETADDRINFO, REAL_COUNT };
static const char *const real_names[REAL_COUNT] = {"bind", "connect",
                                                   "getaddrinfo"};
static void *real_p[REAL_COUNT];

/* Process state, computed once: 0 = not computed yet. */
#define ST_INIT (1ULL << 63)
#define ST_ACTIVE (1ULL << 62)
#define ST_LOG (1ULL << 61)
#define ST_ADDR_MASK 0xFFFFFFFFULL /* workspace IPv4, host byte order */
static uint64_t g_state;

/* ------------------------------------------------------------------ */
/* real functions                                                      */

static void resolve_all(void)
{
    for (int i = 0; i < REAL_COUNT; i++)
        if (!__atomic_load_n(&real_p[i], __ATOMIC_ACQUIRE))
            __atomic_store_n(&real_p[i], dlsym(RTLD_NEXT, real_names[i]),
                             __ATOMIC_RELEASE);
}

/* Resolved at load time so that the first bind/connect (possibly from a
 * signal handler) does not have to call dlsym. */
__attribute__((constructor)) static void shim_constructor(void)
{
    resolve_all();
}

/* The next definition of function id, resolving late if the constructor has
 * not run yet (a call from another library's constructor). */
static void *real_fn(enum real_id id)
{
    void *f = __atomic_load_n(&real_p[id], __ATOMIC_ACQUIRE);
    if (!f) {
        resolve_all();
        f = __atomic_load_n(&real_p[id], __ATOMIC_ACQUIRE);
    }
    return f;
}

/* ------------------------------------------------------------------ */
/* workspace name -> address                                           */

static int flag_set(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] && strcmp(v, "0") != 0;
}

/* The workspace number of the last '/'-component of name[0..len).
 * Returns 0 on success, -1 when the trailing number overflows uint32. */
static int workspace_number(const char *name, size_t len, uint32_t *out)
{
    size_t start = len;
    while (start > 0 && name[start - 1] != '/')
        start--;
    const unsigned char *s = (const unsigned char *)name + start;
    size_t n = len - start;

    size_t i = n;
    while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9')
        i--;
    if (i < n) {
        uint64_t v = 0;
        for (size_t j = i; j < n; j++) {
            v = v * 10 + (uint64_t)(s[j] - '0');
            if (v > 0xFFFFFFFFULL)
                return -1;
        }
        *out = (uint32_t)v;
        return 0;
    }

    uint32_t h = 0x811C9DC5u;
    for (size_t j = 0; j < n; j++) {
        unsigned char c = s[j];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        h ^= c;
        h *= 0x01000193u;
    }
    *out = h & 0xFFFFu;
    return 0;
}

static uint32_t workspace_addr(uint32_t n)
{
    return (127u << 24) | (18u << 16) | (((n >> 8) & 0xFFu) << 8) | (n & 0xFFu);
}

/* Finds the workspace directory in the CWD: the component right below the
 * root if it starts with "workspace-". Points *name and *len into cwd. */
static int workspace_from_cwd(const char *cwd, const char **name, size_t *len)
{
    const char *root = getenv("CMUX_WORKSPACE_ROOT");
    if (!root || !root[0])
        root = "/root";
    size_t rlen = strlen(root);
    while (rlen > 0 && root[rlen - 1] == '/')
        rlen--; /* "/root/" -> "/root", "/" -> "" */
    if (strncmp(cwd, root, rlen) != 0 || cwd[rlen] != '/')
        return -1;
    const char *comp = cwd + rlen + 1;
    while (*comp == '/')
        comp++;
    const char *end = strchr(comp, '/');
    size_t clen = end ? (size_t)(end - comp) : strlen(comp);
    if (clen < 10 || strncmp(comp, "workspace-", 10) != 0)
        return -1;
    *name = comp;
    *len = clen;
    return 0;
}

static uint64_t detect(void)
{
    uint64_t st = ST_INIT;
    if (flag_set("CMUX_PRELOAD_DISABLE"))
        return st;
    if (flag_set("CMUX_PRELOAD_LOG"))
        st |= ST_LOG;

    uint32_t n;
    const char *env = getenv("CMUX_WORKSPACE_INTERNAL");
    if (env && env[0]) {
        if (workspace_number(env, strlen(env), &n) != 0)
            return st; /* invalid name: behave as without the shim */
        return st | ST_ACTIVE | workspace_addr(n);
    }

    char cwd[PATH_MAX + 1];
    const char *name;
    size_t len;
    if (getcwd(cwd, sizeof cwd) == NULL)
        return st;
    if (workspace_from_cwd(cwd, &name, &len) != 0)
        return st;
    if (workspace_number(name, len, &n) != 0)
        return st;
    return st | ST_ACTIVE | workspace_addr(n);
}

static uint64_t state(void)
{
    uint64_t st = __atomic_load_n(&g_state, __ATOMIC_ACQUIRE);
    if (st)
        return st;
    uint64_t fresh = detect();
    uint64_t expected = 0;
    if (__atomic_compare_exchange_n(&g_state, &expected, fresh, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return fresh;
    return expected; /* another thread (or signal handler) won: use its value */
}

/* ------------------------------------------------------------------ */
/* logging: async-signal-safe, no stdio, no allocation                 */

struct logbuf {
    char buf[512];
    size_t len;
};

static void lb_str(struct logbuf *b, const char *s)
{
    while (*s && b->len < sizeof b->buf - 1)
        b->buf[b->len++] = *s++;
}

static void lb_uint(struct logbuf *b, unsigned v)
{
    char tmp[16];
    size_t i = 0;
    do {
        tmp[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i < sizeof tmp);
    while (i > 0 && b->len < sizeof b->buf - 1)
        b->buf[b->len++] = tmp[--i];
}

static void lb_sockaddr(struct logbuf *b, const struct sockaddr *sa)
{
    char ip[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        if (!inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip))
            ip[0] = 0;
        lb_str(b, ip);
        lb_str(b, ":");
        lb_uint(b, ntohs(sin->sin_port));
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        if (!inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip))
            ip[0] = 0;
        lb_str(b, "[");
        lb_str(b, ip);
        lb_str(b, "]:");
        lb_uint(b, ntohs(sin6->sin6_port));
    }
}

static void lb_flush(struct logbuf *b)
{
    int saved = errno;
    b->buf[b->len++] = '\n';
    const char *p = b->buf;
    size_t left = b->len;
    while (left > 0) {
        ssize_t w = write(STDERR_FILENO, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        p += w;
        left -= (size_t)w;
    }
    errno = saved;
}

/* Every line starts "cmux-preload: <op> ". */
static void lb_head(struct logbuf *b, const char *op)
{
    lb_str(b, "cmux-preload: ");
    lb_str(b, op);
    lb_str(b, " ");
}

static void log_rewrite(const char *op, const struct sockaddr *from,
                        const struct sockaddr *to)
{
    struct logbuf b = {.len = 0};
    lb_head(&b, op);
    lb_sockaddr(&b, from);
    lb_str(&b, " -> ");
    lb_sockaddr(&b, to);
    lb_flush(&b);
}

static void log_v6only(const char *op, const struct sockaddr *from,
                       const struct sockaddr *to, const char *err)
{
    struct logbuf b = {.len = 0};
    lb_head(&b, op);
    lb_sockaddr(&b, from);
    lb_str(&b, " refused (");
    lb_str(&b, err);
    lb_str(&b, "): the socket has IPV6_V6ONLY set, so it cannot use the "
               "workspace address ");
    lb_sockaddr(&b, to);
    lb_str(&b, "; clear IPV6_V6ONLY or use IPv4");
    lb_flush(&b);
}

/* ------------------------------------------------------------------ */
/* address classification                                              */

/* Loopback or wildcard: connect(0.0.0.0) reaches the local host on Linux,
 * so it is the same hole as 127.0.0.1. */
static int v4_is_local(uint32_t a)
{
    return a == INADDR_ANY || a == INADDR_LOOPBACK;
}

/* ::, ::1 and their v4-mapped forms. */
static int v6_is_local(const struct in6_addr *a)
{
    uint32_t w;
    if (IN6_IS_ADDR_UNSPECIFIED(a) || IN6_IS_ADDR_LOOPBACK(a))
        return 1;
    if (!IN6_IS_ADDR_V4MAPPED(a))
        return 0;
    memcpy(&w, &a->s6_addr[12], 4);
    return v4_is_local(ntohl(w));
}

static void v6_set_mapped(struct in6_addr *a, uint32_t v4)
{
    uint32_t w = htonl(v4);
    memset(a->s6_addr, 0, 10);
    a->s6_addr[10] = 0xFF;
    a->s6_addr[11] = 0xFF;
    memcpy(&a->s6_addr[12], &w, 4);
}

/* Writes addr moved onto workspace address ws into *out and returns its
 * length, or returns 0 when addr is not local (or too short to read) and
 * stays as it is. The copy lives in the caller's frame: nothing allocated. */
static socklen_t rewrite_local(const struct sockaddr *addr, socklen_t addrlen,
                               uint32_t ws, struct sockaddr_storage *out)
{
    if (addr->sa_family == AF_INET && addrlen >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in *sin = (struct sockaddr_in *)out;
        memcpy(sin, addr, sizeof *sin);
        if (!v4_is_local(ntohl(sin->sin_addr.s_addr)))
            return 0;
        sin->sin_addr.s_addr = htonl(ws);
        return sizeof *sin;
    }
    if (addr->sa_family == AF_INET6 && addrlen >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
        memcpy(sin6, addr, sizeof *sin6);
        if (!v6_is_local(&sin6->sin6_addr))
            return 0;
        v6_set_mapped(&sin6->sin6_addr, ws);
        sin6->sin6_scope_id = 0;
        return sizeof *sin6;
    }
    return 0;
}

static int socket_is_v6only(int fd)
{
    int v = 0;
    socklen_t l = sizeof v;
    if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v, &l) != 0)
        return 0;
    return v != 0;
}

/* ------------------------------------------------------------------ */
/* interposed functions                                                */

/* What differs between bind and connect: the name in the log and the error
 * a V6ONLY socket gets instead of the host-wide :: / ::1. */
struct sock_op {
    enum real_id id;
    const char *name;
    int v6only_errno;
    const char *v6only_errname;
};

static const struct sock_op op_bind = {REAL_BIND, "bind", EADDRNOTAVAIL,
                                       "EADDRNOTAVAIL"};
static const struct sock_op op_connect = {REAL_CONNECT, "connect", ENETUNREACH,
                                          "ENETUNREACH"};

static int interpose(const struct sock_op *op, int fd,
                     const struct sockaddr *addr, socklen_t addrlen)
{
    sockaddr_fn real = (sockaddr_fn)real_fn(op->id);
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    uint64_t st = state();
    if (!(st & ST_ACTIVE) || !addr)
        return real(fd, addr, addrlen);

    struct sockaddr_storage ss;
    const struct sockaddr *to = (const struct sockaddr *)&ss;
    uint32_t ws = (uint32_t)(st & ST_ADDR_MASK);
    socklen_t len = rewrite_local(addr, addrlen, ws, &ss);
    if (len == 0)
        return real(fd, addr, addrlen);
    if (to->sa_family == AF_INET6 && socket_is_v6only(fd)) {
        if (st & ST_LOG)
            log_v6only(op->name, addr, to, op->v6only_errname);
        errno = op->v6only_errno;
        return -1;
    }
    if (st & ST_LOG)
        log_rewrite(op->name, addr, to);
    return real(fd, to, len);
}

EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t addrlen)
{
    return interpose(&op_bind, fd, addr, addrlen);
}

EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t addrlen)
{
    return interpose(&op_connect, fd, addr, addrlen);
}

/*
 * getaddrinfo for a local name answers with the workspace address. The list
 * is built by glibc itself from the numeric workspace address (AI_NUMERICHOST),
 * so it has exactly glibc's layout -- each addrinfo allocated together with its
 * sockaddr, freed completely by freeaddrinfo -- and glibc's handling of
 * ai_socktype/ai_protocol (one entry per STREAM/DGRAM/RAW when unspecified),
 * services (numeric, or by name through NSS / /etc/services; EAI_SERVICE when
 * unknown) and AI_CANONNAME/AI_NUMERICSERV.
 *
 * Family: AF_INET -> 127.18.x.y; AF_INET6 -> ::ffff:127.18.x.y; AF_UNSPEC ->
 * IPv4 only. AI_PASSIVE with a NULL node yields the workspace address rather
 * than the wildcard (a wildcard bind would be rewritten anyway).
 */
static int is_local_name(const char *node)
{
    if (!node || !node[0])
        return 1;
    return strcasecmp(node, "localhost") == 0 ||
           strcasecmp(node, "localhost.") == 0 || strcmp(node, "127.0.0.1") == 0;
}

EXPORT int getaddrinfo(const char *node, const char *service,
                       const struct addrinfo *hints, struct addrinfo **res)
{
    getaddrinfo_fn real = (getaddrinfo_fn)real_fn(REAL_GETADDRINFO);
    if (!real)
        return EAI_SYSTEM;
    uint64_t st = state();
    if (!(st & ST_ACTIVE) || !is_local_name(node))
        return real(node, service, hints, res);
    /* Both NULL is EAI_NONAME, AI_CANONNAME without a node EAI_BADFLAGS:
     * let glibc say so. */
    if ((!node || !node[0]) &&
        (!service || (hints && (hints->ai_flags & AI_CANONNAME))))
        return real(node, service, hints, res);

    struct addrinfo h;
    if (hints)
        h = *hints;
    else
        memset(&h, 0, sizeof h);
    /* "localhost" is not a numeric host: AI_NUMERICHOST must still fail. */
    if (node && node[0] && (h.ai_flags & AI_NUMERICHOST) &&
        strcmp(node, "127.0.0.1") != 0)
        return real(node, service, hints, res);
    if (h.ai_family != AF_UNSPEC && h.ai_family != AF_INET &&
        h.ai_family != AF_INET6)
        return real(node, service, hints, res);

    uint32_t ws = (uint32_t)(st & ST_ADDR_MASK);
    struct in_addr ia = {.s_addr = htonl(ws)};
    char v4[INET_ADDRSTRLEN];
    char host[INET6_ADDRSTRLEN + 8];
    if (!inet_ntop(AF_INET, &ia, v4, sizeof v4))
        return EAI_SYSTEM;
    if (h.ai_family == AF_INET6) {
        memcpy(host, "::ffff:", 7);
        memcpy(host + 7, v4, strlen(v4) + 1);
        h.ai_flags &= ~(AI_V4MAPPED | AI_ALL);
    } else {
        h.ai_family = AF_INET;
        memcpy(host, v4, strlen(v4) + 1);
    }
    /* The workspace address always exists on lo, which AI_ADDRCONFIG ignores. */
    h.ai_flags &= ~AI_ADDRCONFIG;
    h.ai_flags |= AI_NUMERICHOST;
    h.ai_addrlen = 0;
    h.ai_addr = NULL;
    h.ai_canonname = NULL;
    h.ai_next = NULL;

    int rc = real(host, service, &h, res);
    if (st & ST_LOG) {
        struct logbuf b = {.len = 0};
        lb_head(&b, "getaddrinfo");
        lb_str(&b, node ? (node[0] ? node : "\"\"") : "NULL");
        lb_str(&b, " -> ");
        lb_str(&b, host);
        if (rc != 0) {
            lb_str(&b, " (");
            lb_str(&b, gai_strerror(rc));
            lb_str(&b, ")");
        }
        lb_flush(&b);
    }
    return rc;
}
