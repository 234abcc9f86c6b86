/*
 * LD_PRELOAD shim that lets Debian's unmodified C xenstored (xen-utils-4.17,
 * /usr/lib/xen-4.17/bin/xenstored) run as an ordinary process on a machine
 * without a Xen hypervisor, so the test suite talks to the real daemon over
 * its unix socket instead of a mock.
 *
 * Why it is needed: at start-up xenstored opens libxenctrl, libxengnttab and
 * libxenevtchn handles (all of which need /dev/xen/... and a hypervisor) and
 * introduces dom0 by reading its event channel port from /proc/xen/xsd_port
 * and mmap()ing its ring page from /proc/xen/xsd_kva. With -D it skips dom0,
 * but then its node store is never set up (that happens when dom0 is
 * introduced) and the first request crashes it. So instead of skipping the
 * dom0 set-up we make it succeed:
 *
 *   - the two /proc/xen files are redirected to scratch files in
 *     $XENSTORED_SHIM_DIR (created here on first use);
 *   - libxenctrl, libxengnttab and libxenevtchn calls that 4.17's xenstored
 *     imports (checked with `nm -D --undefined-only`) get dummy handles;
 *   - the event channel handle owns a real pipe, because xenstored poll()s
 *     the fd returned by xenevtchn_fd() in its main loop.
 *
 * Nothing ever writes to the dom0 ring page (no kernel is on the other side),
 * so dom0's ring stays idle; clients use the unix socket ($XENSTORED_PATH).
 *
 * Guest domains (issue 3): a test can also run a guest domain N whose
 * XenStore connection is a real ring, so that xenstored applies its
 * permission checks and per-domain quotas to it exactly as on a host. The
 * guest side is tests/support/guestbridge.py; it meets xenstored through
 * three files in $XENSTORED_SHIM_DIR:
 *
 *   domain-N.ring    the ring page: 4096 bytes laid out as xs_wire.h's
 *                    struct xenstore_domain_interface. The bridge creates it;
 *                    xengnttab_map_grant_ref(N, ...) mmap()s it MAP_SHARED, so
 *                    both processes see the same page, like a granted frame.
 *   evtchn           a FIFO: guest -> xenstored events. It is the read end of
 *                    xenstored's event channel handle (what xenevtchn_fd()
 *                    returns), opened O_RDWR so it never reports EOF. A guest
 *                    writes one 32-bit record (below) per notification.
 *   domain-N.evtchn  a FIFO: xenstored -> guest events. The bridge keeps it
 *                    open for reading; xenevtchn_notify() on the port bound
 *                    to domain N writes a 32-bit record to it.
 *   domain-N.dying   if present, xc_domain_getinfo reports N as dying (the
 *                    domain was destroyed); raise VIRQ_DOM_EXC (below) to make
 *                    xenstored notice, as the hypervisor would.
 *
 * FIFOs rather than sockets because their paths have no 108-byte limit
 * (pytest's tmp_path is deep) and because a FIFO outlives a killed xenstored,
 * so the guest side never has to reopen it.
 *
 * Records written to "evtchn" (native-endian uint32):
 *   N                       domain N notified its xenstore port
 *   EVTCHN_REC_VIRQ | v     virtual IRQ v fired (3 = VIRQ_DOM_EXC)
 *   EVTCHN_REC_PORT | p     local port p is pending (evtchn_raise)
 *
 * Environment:
 *   XENSTORED_SHIM_DIR      directory for xsd_port/xsd_kva (required)
 *   XENSTORED_SHIM_DOMAINS  comma-separated domids that "exist" besides 0
 *                           (xc_domain_getinfo reports them; xenstored only
 *                           honours permissions naming existing domains)
 *   XENSTORED_SHIM_DEBUG    non-empty: log every stubbed call to stderr
 *
 * Build: gcc -shared -fPIC -O2 -Wall -o shim.so shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SHIM "xenstored-shim"

/* ------------------------------------------------------------------------
 * Logging and configuration
 * ------------------------------------------------------------------------ */

static int shim_debug(void)
{
    const char *v = getenv("XENSTORED_SHIM_DEBUG");
    return v && *v;
}

#define LOG(...)                                                           \
    do {                                                                   \
        if (shim_debug()) {                                                \
            fprintf(stderr, SHIM ": " __VA_ARGS__);                        \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

/* ------------------------------------------------------------------------
 * /proc/xen redirection
 *
 * xenstored's posix.c reads dom0's event channel port from
 * /proc/xen/xsd_port and mmap()s dom0's ring page from /proc/xen/xsd_kva,
 * both with open(2). The dom0 kernel would provide them; here they are
 * scratch files: xsd_port holds DOM0_REMOTE_PORT, xsd_kva is one zeroed page
 * (a shorter file would SIGBUS on access through the mapping).
 * ------------------------------------------------------------------------ */

#define PROC_XEN "/proc/xen/"
#define DOM0_REMOTE_PORT 1

typedef int (*open_fn)(const char *, int, ...);

static int real_open(const char *path, int flags, mode_t mode)
{
    static open_fn next;

    if (!next)
        next = (open_fn)dlsym(RTLD_NEXT, "open");
    return next(path, flags, mode);
}

/* Create the scratch file for /proc/xen/<name> if missing; 0 or -1. */
static int prepare_scratch(const char *name, const char *scratch)
{
    long page = sysconf(_SC_PAGESIZE);
    struct stat st;
    int fd, rc = 0;

    fd = real_open(scratch, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) < 0) {
        rc = -1;
    } else if (!strcmp(name, "xsd_port") && st.st_size == 0) {
        char buf[16];
        int n = snprintf(buf, sizeof(buf), "%d\n", DOM0_REMOTE_PORT);
        if (write(fd, buf, n) != n)
            rc = -1;
    } else if (!strcmp(name, "xsd_kva") && st.st_size < page) {
        if (ftruncate(fd, page) < 0)
            rc = -1;
    }
    close(fd);
    return rc;
}

/*
 * Map "/proc/xen/xsd_port" and "/proc/xen/xsd_kva" to files in
 * $XENSTORED_SHIM_DIR. Returns the path to open: the original one when it is
 * not redirected, else buf (or NULL with errno set on failure).
 */
static const char *redirect(const char *path, char *buf, size_t len)
{
    const char *name, *dir;

    if (!path || strncmp(path, PROC_XEN, strlen(PROC_XEN)))
        return path;
    name = path + strlen(PROC_XEN);
    if (strcmp(name, "xsd_port") && strcmp(name, "xsd_kva"))
        return path;

    dir = getenv("XENSTORED_SHIM_DIR");
    if (!dir || !*dir) {
        fprintf(stderr, SHIM ": XENSTORED_SHIM_DIR is not set, cannot "
                "redirect %s\n", path);
        errno = ENOENT;
        return NULL;
    }
    if ((size_t)snprintf(buf, len, "%s/%s", dir, name) >= len) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    if (prepare_scratch(name, buf) < 0) {
        fprintf(stderr, SHIM ": cannot prepare %s: %s\n", buf,
                strerror(errno));
        return NULL;
    }
    LOG("open %s -> %s", path, buf);
    return buf;
}

static int open_redirected(const char *path, int flags, va_list ap)
{
    char buf[4096];
    mode_t mode = 0;

    if (flags & (O_CREAT | O_TMPFILE))
        mode = va_arg(ap, mode_t);
    path = redirect(path, buf, sizeof(buf));
    if (!path)
        return -1;
    return real_open(path, flags, mode);
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    int fd;

    va_start(ap, flags);
    fd = open_redirected(path, flags, ap);
    va_end(ap);
    return fd;
}

/* glibc may resolve open() of an LFS build to open64(); same thing on 64-bit. */
int open64(const char *path, int flags, ...)
{
    va_list ap;
    int fd;

    va_start(ap, flags);
    fd = open_redirected(path, flags, ap);
    va_end(ap);
    return fd;
}

/* ------------------------------------------------------------------------
 * Domains
 *
 * xenstored asks libxenctrl whether a domain exists (xc_domain_getinfo) when
 * it checks for dead domains (after VIRQ_DOM_EXC) and when permissions name a
 * domain: permissions for a domain that does not exist are ignored. Dom0
 * always exists; $XENSTORED_SHIM_DOMAINS adds more. No domain ever dies or
 * shuts down here.
 * ------------------------------------------------------------------------ */

#define MAX_DOMAINS 64

static uint32_t domains[MAX_DOMAINS];
static unsigned int nr_domains;

static void load_domains(void)
{
    const char *env = getenv("XENSTORED_SHIM_DOMAINS");
    char *copy, *tok, *save = NULL;

    if (nr_domains)
        return;
    domains[nr_domains++] = 0;
    if (!env || !(copy = strdup(env)))
        return;
    for (tok = strtok_r(copy, ", ", &save); tok && nr_domains < MAX_DOMAINS;
         tok = strtok_r(NULL, ", ", &save)) {
        char *end;
        unsigned long id = strtoul(tok, &end, 10);
        if (*end || id == 0 || id >= 0x7ff0) {
            fprintf(stderr, SHIM ": ignoring bad domid '%s'\n", tok);
            continue;
        }
        domains[nr_domains++] = (uint32_t)id;
    }
    free(copy);
}

/*
 * $XENSTORED_SHIM_DIR/<name> into buf; 0, or -1 with errno set. Every guest
 * file lives there, so a test needs to know a single directory.
 */
static int shim_path(char *buf, size_t len, const char *fmt, uint32_t domid)
{
    const char *dir = getenv("XENSTORED_SHIM_DIR");
    char name[64];

    if (!dir || !*dir) {
        errno = ENOENT;
        return -1;
    }
    snprintf(name, sizeof(name), fmt, domid);
    if ((size_t)snprintf(buf, len, "%s/%s", dir, name) >= len) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* A test marks domain N destroyed by creating domain-N.dying. */
static int domain_dying(uint32_t domid)
{
    char path[4096];

    return domid != 0 && shim_path(path, sizeof(path), "domain-%u.dying", domid) == 0
           && access(path, F_OK) == 0;
}

/* ------------------------------------------------------------------------
 * libxenctrl
 *
 * xenstored opens an xc_interface once (domain_init) and uses it only for
 * xc_domain_getinfo. The handle is never dereferenced by the caller.
 * ------------------------------------------------------------------------ */

typedef struct xc_interface_core xc_interface;
static struct { int unused; } dummy_xc;

xc_interface *xc_interface_open(void *logger, void *dombuild_logger,
                                unsigned int flags)
{
    (void)logger; (void)dombuild_logger; (void)flags;
    load_domains();
    LOG("xc_interface_open");
    return (xc_interface *)&dummy_xc;
}

int xc_interface_close(xc_interface *xch)
{
    (void)xch;
    return 0;
}

/*
 * The leading fields of xenctrl.h's xc_dominfo_t in 4.17, the only ones
 * xenstored reads (domid and the dying/crashed/shutdown bits). We write only
 * this prefix: the rest of the caller's struct stays as it was.
 */
struct dominfo_prefix {
    uint32_t domid;
    uint32_t ssidref;
    unsigned int dying:1, crashed:1, shutdown:1,
                 paused:1, blocked:1, running:1,
                 hvm:1, debugged:1, xenstore:1, hap:1;
};

/*
 * Like the real call: fill info for the first existing domain whose id is
 * >= first_domid and return how many were filled. Because only the prefix
 * of the real record is known, at most one record is returned (xenstored
 * always asks for exactly one and then checks info->domid itself).
 */
int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid,
                      unsigned int max_doms, void *info)
{
    struct dominfo_prefix *out = info;
    uint32_t best = UINT32_MAX;
    unsigned int i;

    (void)xch;
    load_domains();
    if (!max_doms)
        return 0;
    for (i = 0; i < nr_domains; i++)
        if (domains[i] >= first_domid && domains[i] < best)
            best = domains[i];
    LOG("xc_domain_getinfo(%u) -> %d", first_domid,
        best == UINT32_MAX ? -1 : (int)best);
    if (best == UINT32_MAX)
        return 0;
    memset(out, 0, sizeof(*out));
    out->domid = best;
    /* A destroyed domain stays listed while dying, as with a real
     * hypervisor until its last page is freed; xenstored then releases its
     * connection and deletes the nodes it owns. */
    if (domain_dying(best)) {
        out->dying = 1;
        out->shutdown = 1;
    } else {
        out->running = 1;
    }
    return 1;
}

/* ------------------------------------------------------------------------
 * libxengnttab
 *
 * xenstored maps each guest's ring page with
 * xengnttab_map_grant_ref(domid, GNTTAB_RESERVED_XENSTORE) when a guest is
 * introduced; 4.17 ignores the mfn given in XS_INTRODUCE. Dom0's ring comes
 * from /proc/xen/xsd_kva instead. Here the "granted frame" of domain N is the
 * file domain-N.ring, mapped shared so the guest bridge sees every store.
 * Without that file XS_INTRODUCE of N fails (ENOENT), as it would for a
 * guest that granted nothing.
 * ------------------------------------------------------------------------ */

#define RING_PAGE 4096

typedef struct xengnttab_handle xengnttab_handle;
static struct { int unused; } dummy_gnttab;

xengnttab_handle *xengnttab_open(void *logger, unsigned int flags)
{
    (void)logger; (void)flags;
    LOG("xengnttab_open");
    return (xengnttab_handle *)&dummy_gnttab;
}

int xengnttab_close(xengnttab_handle *xgt)
{
    (void)xgt;
    return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t count)
{
    (void)xgt; (void)count;
    return 0;
}

void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid,
                              uint32_t ref, int prot)
{
    char path[4096];
    struct stat st;
    void *page;
    int fd, saved;

    (void)xgt;
    if (shim_path(path, sizeof(path), "domain-%u.ring", domid) < 0)
        return NULL;
    fd = real_open(path, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        LOG("xengnttab_map_grant_ref(dom %u, ref %u): %s: %s", domid, ref,
            path, strerror(errno));
        return NULL;
    }
    /* A short file would SIGBUS xenstored on the first access. */
    if (fstat(fd, &st) < 0 || st.st_size < RING_PAGE) {
        close(fd);
        fprintf(stderr, SHIM ": %s is not a %d-byte ring page\n", path,
                RING_PAGE);
        errno = EINVAL;
        return NULL;
    }
    page = mmap(NULL, RING_PAGE, prot, MAP_SHARED, fd, 0);
    saved = errno;
    close(fd);
    if (page == MAP_FAILED) {
        errno = saved;
        return NULL;
    }
    LOG("xengnttab_map_grant_ref(dom %u, ref %u) -> %p", domid, ref, page);
    return page;
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start, uint32_t count)
{
    (void)xgt;
    LOG("xengnttab_unmap(%p, %u)", start, count);
    return munmap(start, (size_t)count * RING_PAGE);
}

/* ------------------------------------------------------------------------
 * libxenevtchn
 *
 * xenstored binds dom0's port (from xsd_port) and VIRQ_DOM_EXC, notifies
 * ports after reading or writing a ring, and poll()s xenevtchn_fd() in its
 * main loop; when it is readable it calls xenevtchn_pending() then
 * xenevtchn_unmask(). The first handle reads the FIFO $XENSTORED_SHIM_DIR/
 * evtchn (see the top of this file), so guest bridges can wake xenstored from
 * another process; any further handle gets a private pipe. A pending event is
 * a record written to it. With no guest, nothing is ever written and the fd
 * never becomes readable.
 *
 * After waking up, xenstored scans every domain's ring whatever port was
 * pending, so coalesced or spurious events lose nothing.
 * ------------------------------------------------------------------------ */

typedef uint32_t evtchn_port_t;

#define MAX_PORTS 256

enum binding_kind { UNBOUND = 0, INTERDOMAIN, VIRQ };

#define EVTCHN_REC_KIND 0xc0000000u
#define EVTCHN_REC_VIRQ 0x40000000u
#define EVTCHN_REC_PORT 0x80000000u

struct binding {
    enum binding_kind kind;
    uint32_t domid;          /* INTERDOMAIN: the remote domain */
    evtchn_port_t remote;    /* INTERDOMAIN: the remote port */
    unsigned int virq;       /* VIRQ */
    int notify_fd;           /* INTERDOMAIN guest: domain-N.evtchn, or -1 */
};

typedef struct xenevtchn_handle {
    int rfd, wfd;            /* pending records, a uint32_t each */
    struct binding ports[MAX_PORTS];  /* indexed by local port; 0 unused */
} xenevtchn_handle;

static int shared_fifo_taken;

/* Mark a local port pending: wakes up the poll loop. 0 or -1. Kept for
 * debugging from inside the daemon (e.g. under gdb). */
static __attribute__((unused)) int evtchn_raise(xenevtchn_handle *h, evtchn_port_t port)
{
    uint32_t rec = EVTCHN_REC_PORT | port;

    return write(h->wfd, &rec, sizeof(rec)) == sizeof(rec) ? 0 : -1;
}

/*
 * Open $XENSTORED_SHIM_DIR/evtchn (creating the FIFO if the bridge has not),
 * O_RDWR: a FIFO opened for reading only would report EOF, i.e. readable
 * forever, whenever no guest holds it open, and xenstored would spin.
 */
static int open_shared_fifo(void)
{
    char path[4096];

    if (shim_path(path, sizeof(path), "evtchn", 0) < 0)
        return -1;
    if (mkfifo(path, 0600) < 0 && errno != EEXIST)
        return -1;
    return real_open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC, 0);
}

static int alloc_port(xenevtchn_handle *h, struct binding b)
{
    unsigned int p;

    for (p = 1; p < MAX_PORTS; p++) {
        if (h->ports[p].kind == UNBOUND) {
            h->ports[p] = b;
            return (int)p;
        }
    }
    errno = ENOSPC;
    return -1;
}

xenevtchn_handle *xenevtchn_open(void *logger, unsigned int flags)
{
    xenevtchn_handle *h;
    int fds[2];

    (void)logger; (void)flags;
    h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    fds[0] = shared_fifo_taken ? -1 : open_shared_fifo();
    if (fds[0] >= 0) {
        shared_fifo_taken = 1;
        fds[1] = dup(fds[0]);
        if (fds[1] < 0) {
            close(fds[0]);
            free(h);
            return NULL;
        }
    } else {
        if (!shared_fifo_taken)
            fprintf(stderr, SHIM ": no guest event channel FIFO (%s); guest "
                    "domains cannot be introduced\n", strerror(errno));
        if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
            free(h);
            return NULL;
        }
    }
    h->rfd = fds[0];
    h->wfd = fds[1];
    LOG("xenevtchn_open -> fd %d", h->rfd);
    return h;
}

/* Only used when xenstored restarts itself by live update: not supported. */
xenevtchn_handle *xenevtchn_fdopen(void *logger, int fd, unsigned int flags)
{
    (void)logger; (void)fd; (void)flags;
    errno = EOPNOTSUPP;
    return NULL;
}

int xenevtchn_close(xenevtchn_handle *h)
{
    unsigned int p;

    if (h) {
        for (p = 1; p < MAX_PORTS; p++)
            if (h->ports[p].kind == INTERDOMAIN && h->ports[p].notify_fd >= 0)
                close(h->ports[p].notify_fd);
        close(h->rfd);
        close(h->wfd);
        free(h);
    }
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *h)
{
    return h->rfd;
}

int xenevtchn_bind_interdomain(xenevtchn_handle *h, uint32_t domid,
                               evtchn_port_t remote_port)
{
    struct binding b = { INTERDOMAIN, domid, remote_port, 0, -1 };
    int port = alloc_port(h, b);

    LOG("xenevtchn_bind_interdomain(dom %u, remote %u) -> %d", domid,
        remote_port, port);
    return port;
}

int xenevtchn_bind_virq(xenevtchn_handle *h, unsigned int virq)
{
    struct binding b = { VIRQ, 0, 0, virq, -1 };
    int port = alloc_port(h, b);

    LOG("xenevtchn_bind_virq(%u) -> %d", virq, port);
    return port;
}

int xenevtchn_unbind(xenevtchn_handle *h, evtchn_port_t port)
{
    if (port == 0 || port >= MAX_PORTS || h->ports[port].kind == UNBOUND) {
        errno = EINVAL;
        return -1;
    }
    if (h->ports[port].kind == INTERDOMAIN && h->ports[port].notify_fd >= 0)
        close(h->ports[port].notify_fd);
    memset(&h->ports[port], 0, sizeof(h->ports[port]));
    return 0;
}

int xenevtchn_notify(xenevtchn_handle *h, evtchn_port_t port)
{
    struct binding *b;
    uint32_t rec;
    int attempt;

    if (port == 0 || port >= MAX_PORTS || h->ports[port].kind == UNBOUND) {
        errno = EINVAL;
        return -1;
    }
    b = &h->ports[port];
    /* Dom0 has no kernel on the other end, and a VIRQ is never notified. */
    if (b->kind != INTERDOMAIN || b->domid == 0)
        return 0;
    for (attempt = 0; attempt < 2; attempt++) {
        if (b->notify_fd < 0) {
            char path[4096];
            if (shim_path(path, sizeof(path), "domain-%u.evtchn", b->domid) < 0)
                return 0;
            /* O_NONBLOCK: fails with ENXIO instead of blocking when no guest
             * is reading; the event is then lost, as for a guest that is not
             * running, and the bridge rescans the ring when it starts. */
            b->notify_fd = real_open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC, 0);
            if (b->notify_fd < 0)
                return 0;
        }
        rec = port;
        if (write(b->notify_fd, &rec, sizeof(rec)) == sizeof(rec)
            || errno == EAGAIN)
            return 0;   /* a full FIFO already holds a wake-up */
        /* EPIPE (SIGPIPE is ignored by xenstored): the bridge went away and
         * may have come back; reopen once. */
        close(b->notify_fd);
        b->notify_fd = -1;
    }
    return 0;
}

/*
 * Called after poll() said the fd is readable. It must never return -1:
 * xenstored exits on that. A spurious wake-up returns port 0, which is never
 * bound; xenstored then rescans its connections, which is harmless.
 */
int xenevtchn_pending(xenevtchn_handle *h)
{
    uint32_t rec, p;

    if (read(h->rfd, &rec, sizeof(rec)) != sizeof(rec))
        return 0;
    switch (rec & EVTCHN_REC_KIND) {
    case EVTCHN_REC_PORT:
        p = rec & ~EVTCHN_REC_KIND;
        return p < MAX_PORTS ? (int)p : 0;
    case EVTCHN_REC_VIRQ:
        for (p = 1; p < MAX_PORTS; p++)
            if (h->ports[p].kind == VIRQ
                && h->ports[p].virq == (rec & ~EVTCHN_REC_KIND))
                return (int)p;
        return 0;
    default:    /* a guest's domid: the port bound to it */
        for (p = 1; p < MAX_PORTS; p++)
            if (h->ports[p].kind == INTERDOMAIN && h->ports[p].domid == rec)
                return (int)p;
        return 0;
    }
}

int xenevtchn_unmask(xenevtchn_handle *h, evtchn_port_t port)
{
    (void)h; (void)port;
    return 0;
}
