/* Open-loop DNS latency client for bench/latency.sh (issue 18 item 3).
 *
 *   cc -O2 -o latclient bench/latclient.c
 *   latclient udp|tcp ADDR PORT QUERIES.blob RATE SECONDS [SOCKETS [WINDOW [TICK_US]]]
 *
 * Sends the queries of QUERIES.blob (dnsperf -B format: a 2-byte length before each message;
 * taken in turn, each with a fresh ID) over SOCKETS (8) UDP sockets or kept-open TCP
 * connections (pipelined, TCP_NODELAY), round robin, for SECONDS, then waits up to 1 s for the
 * last answers. Answers are matched by ID per socket; a query unanswered after 1 s is lost.
 *
 * RATE > 0: open loop at RATE queries/s, whatever the answers do. One thread wakes every
 * TICK_US (100) µs on an absolute timer, sends what is due by then (round robin, one query per
 * socket in turn: sendmmsg per UDP socket, one write per connection), reads what has arrived
 * (ppoll with no wait, then recvmmsg / recvmsg on the sockets that have some) and sleeps
 * again; so queries leave in bursts of RATE x TICK_US (15 at 150k q/s). A wake-up costs this
 * machine (a VM) tens of µs of CPU, hence a tick rather than a sleep per query or a wake-up per
 * answer. How late each query left against its even schedule is reported ("lag").
 * RATE = 0: closed loop, for the maximum rate: keeps WINDOW (200) queries in flight per socket,
 * blocking in ppoll only when nothing has arrived.
 *
 * Latency runs from the clock read just before the send call to the kernel's receive time of
 * the answer (SO_TIMESTAMPNS: on loopback, when the server's send put it in our queue), so
 * time the answer waits for this client to be scheduled is not counted, as it is not on a
 * client on another machine; the latency as this process saw it (clock read after the receive
 * call, what dnsperf -v prints) is reported beside it ("user"). Over TCP the kernel time is the
 * one of the last segment a read took, so answers read together get the latest: at most about
 * one tick late. Histograms in 1 µs buckets up to 200 ms (the maximum is exact).
 *
 * Output: readable lines, then one "RESULT key=value ..." line that bench/latency.sh parses.
 * Loopback or any address given; bounded: SECONDS + 1 s.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SOCKETS 64
#define IDS 65536
#define BATCH 64
#define QMAX 512           /* longest query taken from the blob */
#define RBUF 512           /* UDP answer bytes read: the header is enough (MSG_TRUNC) */
#define HBUCKETS 200000    /* 1 µs buckets */
#define TIMEOUT_NS 1000000000LL
#define OUTCAP (1 << 20)   /* TCP bytes waiting to be written, per connection */
#define INCAP (1 << 18)

typedef struct {
    uint64_t *b, n, max;
} hist;

struct sock {
    int fd, closed;
    int64_t sent_at[IDS]; /* CLOCK_REALTIME ns of the send, 0: no query in flight */
    uint64_t next, oldest; /* sequence numbers; ID = seq & 0xffff */
    uint64_t inflight;
    /* UDP batch being built */
    int nbatch;
    unsigned char qbuf[BATCH][QMAX];
    size_t qlen[BATCH];
    uint16_t qid[BATCH];
    /* TCP */
    unsigned char *out, *in;
    size_t out_len, in_len;
};

static struct sock *socks;
static int nsocks, tcp;
static unsigned char *blob;
static size_t *offsets, count, qpos;
static hist h_kern, h_user, h_lag;
static uint64_t sent, answered, lost, unexpected, send_errors, closed_conns;
static uint64_t rr;

static int64_t ns(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void hist_init(hist *h) {
    h->b = calloc(HBUCKETS, sizeof *h->b);
    if (!h->b) {
        perror("calloc");
        exit(2);
    }
}

static void hist_add(hist *h, int64_t v_ns) {
    if (v_ns < 0) v_ns = 0;
    uint64_t us = (uint64_t)v_ns / 1000;
    h->b[us < HBUCKETS ? us : HBUCKETS - 1]++;
    h->n++;
    if ((uint64_t)v_ns > h->max) h->max = (uint64_t)v_ns;
}

/* The p-quantile in ms (middle of its 1 µs bucket) of the n values of h and `extra` more
 * counted as above every bucket (lost queries): "inf" when it falls among those, "-" when
 * there is nothing. */
static void hist_qx(const hist *h, double p, uint64_t extra, char *out, size_t len) {
    uint64_t total = h->n + extra;
    if (total == 0) {
        snprintf(out, len, "-");
        return;
    }
    uint64_t want = (uint64_t)(p * (double)total);
    if (want >= total) want = total - 1;
    if (want >= h->n) {
        snprintf(out, len, "inf");
        return;
    }
    uint64_t seen = 0;
    for (uint64_t i = 0; i < HBUCKETS; i++) {
        seen += h->b[i];
        if (seen > want) {
            snprintf(out, len, "%.4f", (i + 0.5) / 1000.0);
            return;
        }
    }
    snprintf(out, len, "%.4f", h->max / 1e6);
}

static void hist_q(const hist *h, double p, char *out, size_t len) { hist_qx(h, p, 0, out, len); }

/* Frees the oldest slots that were answered; counts as lost those older than the timeout
 * (or all, with force), and the oldest one when the ID space is about to wrap. */
static void expire(struct sock *s, int64_t now_rt, int force) {
    while (s->oldest < s->next) {
        int64_t *slot = &s->sent_at[s->oldest & 0xffff];
        if (*slot != 0) {
            if (!force && now_rt - *slot < TIMEOUT_NS && s->next - s->oldest < IDS - 1) break;
            *slot = 0;
            lost++;
            s->inflight--;
        }
        s->oldest++;
    }
}

static void answer(struct sock *s, const unsigned char *msg, size_t len, int64_t kern,
                   int64_t user) {
    if (len < 12 || !(msg[2] & 0x80)) {
        unexpected++;
        return;
    }
    int64_t *slot = &s->sent_at[(msg[0] << 8) | msg[1]];
    if (*slot == 0) {
        unexpected++;
        return;
    }
    hist_add(&h_kern, (kern ? kern : user) - *slot);
    hist_add(&h_user, user - *slot);
    *slot = 0;
    s->inflight--;
    answered++;
}

/* Kernel receive time from a SO_TIMESTAMPNS control message, 0 if none. */
static int64_t cmsg_time(struct msghdr *m) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec t;
            memcpy(&t, CMSG_DATA(c), sizeof t);
            return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
        }
    }
    return 0;
}

/* Takes the next query from the blob into buf with a fresh ID for socket s; returns its
 * length (the message, without the 2-byte length), and the ID in *id. */
static size_t next_query(struct sock *s, unsigned char *buf, uint16_t *id) {
    size_t off = offsets[qpos++ % count];
    size_t len = ((size_t)blob[off] << 8) | blob[off + 1];
    int64_t now = ns(CLOCK_REALTIME);
    expire(s, now, 0); /* frees the ID about to be reused (lost, if still in flight) */
    *id = (uint16_t)(s->next & 0xffff);
    s->next++;
    s->sent_at[*id] = now; /* in flight from here; the send sets the exact time */
    s->inflight++;
    memcpy(buf, blob + off + 2, len);
    buf[0] = (unsigned char)(*id >> 8);
    buf[1] = (unsigned char)(*id & 0xff);
    return len;
}

static void udp_flush(struct sock *s) {
    if (s->nbatch == 0) return;
    struct mmsghdr hdrs[BATCH];
    struct iovec iovs[BATCH];
    memset(hdrs, 0, sizeof hdrs);
    for (int i = 0; i < s->nbatch; i++) {
        iovs[i].iov_base = s->qbuf[i];
        iovs[i].iov_len = s->qlen[i];
        hdrs[i].msg_hdr.msg_iov = &iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    int64_t t = ns(CLOCK_REALTIME);
    for (int i = 0; i < s->nbatch; i++) s->sent_at[s->qid[i]] = t;
    int done = 0;
    while (done < s->nbatch) {
        int r = sendmmsg(s->fd, hdrs + done, (unsigned)(s->nbatch - done), MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            s->sent_at[s->qid[done]] = 0; /* not sent: not in flight */
            s->inflight--;
            send_errors++;
            done++;
            continue;
        }
        sent += (uint64_t)r;
        done += r;
    }
    s->nbatch = 0;
}

static void tcp_flush(struct sock *s) {
    while (s->out_len > 0 && !s->closed) {
        ssize_t r = send(s->fd, s->out, s->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) s->closed = 1, closed_conns++;
            return;
        }
        memmove(s->out, s->out + r, s->out_len - (size_t)r);
        s->out_len -= (size_t)r;
    }
}

/* Queues one query on socket s; returns 0 when its TCP buffer is full or it is closed. */
static int queue_one(struct sock *s) {
    if (s->closed) return 0;
    if (!tcp) {
        s->qlen[s->nbatch] = next_query(s, s->qbuf[s->nbatch], &s->qid[s->nbatch]);
        if (++s->nbatch == BATCH) udp_flush(s);
        return 1;
    }
    if (s->out_len + QMAX + 2 > OUTCAP) return 0;
    uint16_t id;
    size_t len = next_query(s, s->out + s->out_len + 2, &id);
    s->out[s->out_len] = (unsigned char)(len >> 8);
    s->out[s->out_len + 1] = (unsigned char)(len & 0xff);
    s->out_len += len + 2;
    sent++;
    return 1;
}

static void flush_all(void) {
    for (int i = 0; i < nsocks; i++) tcp ? tcp_flush(&socks[i]) : udp_flush(&socks[i]);
}

/* Reads everything that has arrived on s; returns how many answers. */
static uint64_t drain(struct sock *s) {
    uint64_t before = answered;
    if (s->closed) return 0;
    if (!tcp) {
        static unsigned char bufs[BATCH][RBUF];
        static char ctl[BATCH][64];
        struct mmsghdr hdrs[BATCH];
        struct iovec iovs[BATCH];
        for (;;) {
            memset(hdrs, 0, sizeof hdrs);
            for (int i = 0; i < BATCH; i++) {
                iovs[i].iov_base = bufs[i];
                iovs[i].iov_len = RBUF;
                hdrs[i].msg_hdr.msg_iov = &iovs[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
                hdrs[i].msg_hdr.msg_control = ctl[i];
                hdrs[i].msg_hdr.msg_controllen = sizeof ctl[i];
            }
            int n = recvmmsg(s->fd, hdrs, BATCH, MSG_DONTWAIT, NULL);
            if (n <= 0) break;
            int64_t user = ns(CLOCK_REALTIME);
            for (int i = 0; i < n; i++)
                answer(s, bufs[i], hdrs[i].msg_len, cmsg_time(&hdrs[i].msg_hdr), user);
            if (n < BATCH) break;
        }
        return answered - before;
    }
    for (;;) {
        char ctl[64];
        struct iovec iov = {s->in + s->in_len, INCAP - s->in_len};
        struct msghdr m = {0};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = ctl;
        m.msg_controllen = sizeof ctl;
        ssize_t r = recvmsg(s->fd, &m, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            s->closed = 1;
            closed_conns++;
            break;
        }
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        int64_t user = ns(CLOCK_REALTIME), kern = cmsg_time(&m);
        s->in_len += (size_t)r;
        size_t pos = 0;
        while (s->in_len - pos >= 2) {
            size_t len = ((size_t)s->in[pos] << 8) | s->in[pos + 1];
            if (s->in_len - pos < len + 2) break;
            answer(s, s->in + pos + 2, len, kern, user);
            pos += len + 2;
        }
        memmove(s->in, s->in + pos, s->in_len - pos);
        s->in_len -= pos;
        if (s->in_len == INCAP) { /* an answer larger than the buffer: cannot happen in DNS */
            s->closed = 1;
            closed_conns++;
            break;
        }
    }
    return answered - before;
}

/* Reads every socket that has something (one ppoll to find them, then the reads). */
static uint64_t drain_all(struct pollfd *pfds) {
    uint64_t n = 0;
    for (int i = 0; i < nsocks; i++) pfds[i].events = POLLIN;
    struct timespec zero = {0, 0};
    if (ppoll(pfds, (nfds_t)nsocks, &zero, NULL) <= 0) return 0;
    for (int i = 0; i < nsocks; i++)
        if (pfds[i].revents) n += drain(&socks[i]);
    return n;
}

static uint64_t inflight_all(void) {
    uint64_t n = 0;
    for (int i = 0; i < nsocks; i++) n += socks[i].inflight;
    return n;
}

static void expire_all(int force) {
    int64_t now = ns(CLOCK_REALTIME);
    for (int i = 0; i < nsocks; i++) expire(&socks[i], now, force);
}

static void load_blob(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    blob = malloc((size_t)size);
    if (!blob || fread(blob, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    offsets = malloc(sizeof *offsets * ((size_t)size / 14 + 1));
    for (size_t off = 0; off + 2 <= (size_t)size;) {
        size_t len = ((size_t)blob[off] << 8) | blob[off + 1];
        if (len < 12 || len > QMAX || off + 2 + len > (size_t)size) break;
        offsets[count++] = off;
        off += 2 + len;
    }
    if (count == 0) {
        fprintf(stderr, "no queries in %s\n", path);
        exit(2);
    }
}

int main(int argc, char **argv) {
    if (argc < 7 || argc > 10 || (strcmp(argv[1], "udp") && strcmp(argv[1], "tcp"))) {
        fprintf(stderr,
                "usage: %s udp|tcp ADDR PORT QUERIES.blob RATE SECONDS [SOCKETS [WINDOW "
                "[TICK_US]]]\n",
                argv[0]);
        return 2;
    }
    tcp = !strcmp(argv[1], "tcp");
    struct sockaddr_in server = {0};
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &server.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[2]);
        return 2;
    }
    load_blob(argv[4]);
    double rate = atof(argv[5]), seconds = atof(argv[6]);
    nsocks = argc > 7 ? atoi(argv[7]) : 8;
    uint64_t window = argc > 8 ? (uint64_t)atoll(argv[8]) : 200;
    int64_t tick = (argc > 9 ? atoll(argv[9]) : 100) * 1000;
    if (nsocks < 1 || nsocks > MAX_SOCKETS || seconds <= 0 || seconds > 600 || rate < 0 ||
        tick < 1000 || window < 1 || window > IDS / 2) {
        fprintf(stderr, "bad arguments (SOCKETS 1..%d, SECONDS 0..600, TICK_US >= 1)\n",
                MAX_SOCKETS);
        return 2;
    }
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* wake within 1 µs of the tick, not 50 */
    hist_init(&h_kern);
    hist_init(&h_user);
    hist_init(&h_lag);
    socks = calloc((size_t)nsocks, sizeof *socks);
    struct pollfd *pfds = calloc((size_t)nsocks, sizeof *pfds);
    if (!socks || !pfds) return 2;
    int one = 1;
    for (int i = 0; i < nsocks; i++) {
        struct sock *s = &socks[i];
        s->fd = socket(AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
        if (s->fd < 0) {
            perror("socket");
            return 2;
        }
        setsockopt(s->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        int rcv = 4 << 20;
        setsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
        if (tcp) setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(s->fd, (struct sockaddr *)&server, sizeof server) != 0) {
            perror("connect");
            return 2;
        }
        if (tcp) {
            s->out = malloc(OUTCAP);
            s->in = malloc(INCAP);
            if (!s->out || !s->in) return 2;
        }
        pfds[i].fd = s->fd;
        pfds[i].events = POLLIN;
    }

    int64_t start = ns(CLOCK_MONOTONIC), end = start + (int64_t)(seconds * 1e9);
    int64_t next_tick = start;
    uint64_t due_done = 0;
    for (;;) {
        int64_t now = ns(CLOCK_MONOTONIC);
        int sending = now < end;
        uint64_t did = 0;
        if (sending && rate > 0) {
            /* Open loop: everything due by now, round robin over the sockets. */
            uint64_t due = (uint64_t)((double)(now - start) * rate / 1e9);
            /* A client that woke late catches up over several ticks, at most 4 ticks' worth
             * (and 64) per tick, rather than in one burst that overflows socket buffers. */
            uint64_t most = (uint64_t)(4 * rate * (double)tick / 1e9);
            if (most < 64) most = 64;
            if (due > due_done + most) due = due_done + most;
            while (due_done < due) {
                int64_t scheduled = start + (int64_t)((double)due_done * 1e9 / rate);
                int ok = 0;
                for (int k = 0; k < nsocks && !ok; k++) ok = queue_one(&socks[rr++ % nsocks]);
                if (!ok) break; /* every connection's buffer is full: stays due */
                hist_add(&h_lag, now - scheduled);
                due_done++;
                did++;
            }
        } else if (sending) {
            /* Closed loop: top every socket up to WINDOW in flight. */
            for (int i = 0; i < nsocks; i++)
                while (socks[i].inflight < window &&
                       queue_one(&socks[i]))
                    did++;
        }
        flush_all();
        did += drain_all(pfds);
        expire_all(0);
        if (!sending && (inflight_all() == 0 || now >= end + TIMEOUT_NS)) break;
        if (rate > 0) {
            next_tick += tick;
            if (next_tick < now) next_tick = now + tick; /* late: no catch-up burst of ticks */
            struct timespec t = {next_tick / 1000000000LL, next_tick % 1000000000LL};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR) {
            }
        } else if (did == 0) {
            for (int i = 0; i < nsocks; i++)
                pfds[i].events = POLLIN | (socks[i].out_len ? POLLOUT : 0);
            struct timespec t = {0, 10000000};
            ppoll(pfds, (nfds_t)nsocks, &t, NULL);
        }
    }
    expire_all(1);
    double run = (ns(CLOCK_MONOTONIC) - start) / 1e9;
    double sent_for = seconds < run ? seconds : run;

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    char k50[32], k99[32], k999[32], u50[32], u99[32], u999[32], l50[32], l99[32];
    hist_q(&h_kern, 0.50, k50, sizeof k50);
    hist_q(&h_kern, 0.99, k99, sizeof k99);
    hist_q(&h_kern, 0.999, k999, sizeof k999);
    hist_q(&h_user, 0.50, u50, sizeof u50);
    hist_q(&h_user, 0.99, u99, sizeof u99);
    hist_q(&h_user, 0.999, u999, sizeof u999);
    char a99[32];
    hist_qx(&h_kern, 0.99, lost + send_errors, a99, sizeof a99);
    hist_q(&h_lag, 0.50, l50, sizeof l50);
    hist_q(&h_lag, 0.99, l99, sizeof l99);
    printf("%s %s:%s, %d sockets, %s\n", argv[1], argv[2], argv[3], nsocks,
           rate > 0 ? "open loop" : "closed loop");
    printf("  asked %.0f q/s for %.1f s; sent %lu (%.0f q/s), answered %lu (%.0f q/s), lost "
           "%lu, send errors %lu, unexpected %lu, connections closed %lu\n",
           rate, seconds, (unsigned long)sent, sent / sent_for, (unsigned long)answered,
           answered / sent_for, (unsigned long)lost, (unsigned long)send_errors,
           (unsigned long)unexpected, (unsigned long)closed_conns);
    printf("  latency ms (kernel receive time): p50 %s p99 %s p99.9 %s max %.4f; p99 counting "
           "lost queries as slowest: %s\n",
           k50, k99, k999, h_kern.max / 1e6, a99);
    printf("  latency ms (as this process read): p50 %s p99 %s p99.9 %s max %.4f\n", u50, u99,
           u999, h_user.max / 1e6);
    if (rate > 0)
        printf("  send lag ms: p50 %s p99 %s max %.4f; client CPU %.2f s\n", l50, l99,
               h_lag.max / 1e6, cpu);
    printf("RESULT sent=%lu answered=%lu lost=%lu qps=%.0f p50=%s p99=%s p999=%s max=%.4f "
           "a99=%s u50=%s u99=%s u999=%s umax=%.4f lag99=%s lagmax=%.4f cpu=%.2f\n",
           (unsigned long)sent, (unsigned long)answered, (unsigned long)(lost + send_errors),
           answered / sent_for, k50, k99, k999, h_kern.max / 1e6, a99, u50, u99, u999,
           h_user.max / 1e6, l99, h_lag.max / 1e6, cpu);
    return 0;
}
