/*
 * The installed CNI plugins' native front (one binary, installed under each plugin type's name).
 *
 * A Python interpreter needs ~9 ms just to start, two thirds of what the reference Go bridge
 * plugin spends on a whole ADD. Like Mercurial's chg in front of its command server, this
 * client only forwards: it sends the plugin type, stdin and the whole environment to the
 * warm-path daemon (reconciler/cni/server.py) in the wire format of reconciler/cni/wire.py,
 * with its stderr, and relays the exit status and stdout byte for byte. Whenever the daemon
 * does not answer, and for VERSION or an empty CNI_COMMAND (which must not wait for stdin), it
 * execs the Python launcher, which runs the plugin cold: the behaviour is exactly that of
 * reconciler/launcher.py's own warm/cold decision.
 *
 * `reconciler plugins install` compiles it with a generated launcher_config.h defining
 * RCN_PYTHON (the interpreter), RCN_COLD_CODE (the Python launcher's code) and
 * RCN_DEFAULT_SOCKET. Without a C compiler the Python launcher is installed instead.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "launcher_config.h"

#define MAX_REQUEST (4u * 1024 * 1024) /* wire.MAX_REQUEST */
#define MAX_FIELDS 8192u               /* wire.MAX_FIELDS */

extern char **environ;

struct buf {
    char *data;
    size_t len, cap;
};

static int buf_put(struct buf *b, const void *src, size_t n)
{
    if (b->len + n < b->len)
        return -1;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 8192;
        while (cap < b->len + n)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown)
            return -1;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static int buf_u32(struct buf *b, uint32_t v)
{
    unsigned char be[4] = {v >> 24, v >> 16, v >> 8, v};
    return buf_put(b, be, 4);
}

static int buf_field(struct buf *b, const void *src, size_t n)
{
    return buf_u32(b, (uint32_t)n) || buf_put(b, src, n);
}

/* Read all of stdin (whatever its size: the cold path must get every byte back); -1 on a read error. */
static int read_stdin(struct buf *in)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (buf_put(in, chunk, (size_t)n))
            return -1;
    }
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Send the request with our stderr attached to its first bytes (SCM_RIGHTS), as chg passes its stdio
 * to the command server: the daemon writes there what a cold run would write to stderr (the plugin's
 * log lines, an exec'd plugin's stderr). Without an open stderr (checked before the socket is made,
 * which would otherwise take descriptor 2) the request goes alone. */
static int send_request(int sock, const char *p, size_t n, int pass_stderr)
{
    if (!pass_stderr)
        return write_all(sock, p, n);
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = {.iov_base = (void *)p, .iov_len = n};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.space,
                         .msg_controllen = sizeof ctl.space};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    int fd = 2;
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    ssize_t sent;
    do
        sent = sendmsg(sock, &msg, 0);
    while (sent < 0 && errno == EINTR);
    if (sent < 0)
        return -1;
    return write_all(sock, p + sent, n - (size_t)sent);
}

static int read_exact(int fd, char *p, size_t n)
{
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r == 0)
            return -1;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Run the plugin cold: exec the Python launcher, giving it back any stdin already read. */
static int cold(const char *type, int argc, char **argv, const struct buf *consumed)
{
    if (consumed) {
        int fd = memfd_create("cni-stdin", 0);
        if (fd < 0 || write_all(fd, consumed->data ? consumed->data : "", consumed->len) ||
            lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0) {
            printf("{\"code\": 5, \"msg\": \"cannot hand stdin to the cold path\", \"details\": \"%s\"}\n",
                   strerror(errno));
            return 1;
        }
        close(fd);
    }
    char **args = calloc((size_t)argc + 5, sizeof *args);
    if (!args)
        return 1;
    args[0] = (char *)RCN_PYTHON;
    args[1] = (char *)"-SE";
    args[2] = (char *)"-c";
    args[3] = (char *)RCN_COLD_CODE;
    args[4] = (char *)type;
    for (int i = 1; i < argc; i++)
        args[4 + i] = argv[i];
    execv(RCN_PYTHON, args);
    printf("{\"code\": 999, \"msg\": \"cannot start %s\", \"details\": \"%s\"}\n", RCN_PYTHON, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    /* A daemon gone mid-request is EPIPE (run cold), never a SIGPIPE death; Python ignores it too. */
    signal(SIGPIPE, SIG_IGN);
    const char *type = strrchr(argv[0], '/');
    type = type ? type + 1 : argv[0];
    const char *command = getenv("CNI_COMMAND");
    const char *no_warm = getenv("RECONCILER_NO_WARM");
    if (!command || !*command || !strcmp(command, "VERSION") || (no_warm && !strcmp(no_warm, "1")))
        return cold(type, argc, argv, NULL);

    const char *path = getenv("RECONCILER_PLUGIN_SOCKET");
    if (!path || !*path)
        path = RCN_DEFAULT_SOCKET;
    int pass_stderr = fcntl(2, F_GETFD) >= 0;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        return cold(type, argc, argv, NULL);
    strcpy(addr.sun_path, path);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
        return cold(type, argc, argv, NULL); /* no daemon: stdin is still unread */

    struct buf in = {0}, req = {0};
    if (read_stdin(&in) || in.len > MAX_REQUEST)
        return cold(type, argc, argv, &in); /* the daemon would refuse it: run it here */
    uint32_t fields = 2;
    for (char **e = environ; *e; e++)
        if (strchr(*e, '='))
            fields += 2;
    if (fields > MAX_FIELDS)
        return cold(type, argc, argv, &in);
    int bad = buf_put(&req, "RCN1", 4) || buf_u32(&req, fields) || buf_field(&req, type, strlen(type)) ||
              buf_field(&req, in.data ? in.data : "", in.len);
    for (char **e = environ; *e && !bad; e++) {
        const char *eq = strchr(*e, '=');
        if (eq)
            bad = buf_field(&req, *e, (size_t)(eq - *e)) || buf_field(&req, eq + 1, strlen(eq + 1));
    }
    unsigned char head[8];
    if (bad || req.len > MAX_REQUEST || send_request(sock, req.data, req.len, pass_stderr) ||
        read_exact(sock, (char *)head, sizeof head))
        return cold(type, argc, argv, &in);
    uint32_t code = be32(head), size = be32(head + 4);
    char *out = malloc(size ? size : 1);
    if (!out || read_exact(sock, out, size))
        return cold(type, argc, argv, &in);
    if (write_all(1, out, size))
        return 1;
    return (int)code;
}
