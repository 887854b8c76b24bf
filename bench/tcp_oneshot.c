/* One DNS query per TCP connection, as fast as possible, for bench/tcp.sh's per-conn case.
 *
 *   cc -O2 -pthread -o tcp_oneshot bench/tcp_oneshot.c
 *   tcp_oneshot ADDR PORT QUERIES.blob THREADS SECONDS [RATE]
 *
 * Each of THREADS threads loops for SECONDS: connect, send one query from the file (dnsperf -B
 * format: a 2-byte length before each message; taken in turn, with a fresh ID), read the
 * answer, check its ID, close. With RATE (connections per second, in all), each thread starts
 * its connections on a fixed schedule (RATE / THREADS per second, the threads' schedules
 * offset) instead of as fast as it can, and one that falls behind does not catch up in a
 * burst: so two servers can be compared at the same load. Prints dnsperf's summary lines
 * (Queries completed / lost, Run time, Queries per second), which bench/tcp.sh parses.
 *
 * Why not dnsperf: dnsperf 2.10's `-O num-queries-per-conn=1` manages about 100 queries per
 * second here, against either server (its reconnections wait on a timer), so it measures
 * dnsperf, not the servers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in server;
static unsigned char *blob;
static size_t *offsets;
static size_t count;
static double stop_at, start_at, period; /* period: seconds between one thread's starts */
static int nthreads;
static atomic_ulong completed, lost;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int read_full(int fd, unsigned char *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, buf + got, len - got, 0);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            return -1;
        }
        got += (size_t)n;
    }
    return 0;
}

static void *worker(void *arg) {
    size_t i = (size_t)(uintptr_t)arg * 7919;
    uint16_t id = (uint16_t)(uintptr_t)arg * 4099;
    unsigned char query[65537], answer[65535];
    struct timeval timeout = {2, 0};
    int one = 1;
    double next = start_at + period * (double)(uintptr_t)arg / nthreads;
    while (now() < stop_at) {
        if (period > 0) {
            double t = now();
            if (next > t) {
                struct timespec d = {(time_t)(next - t), (long)((next - t - (time_t)(next - t)) * 1e9)};
                nanosleep(&d, NULL);
            } else if (t - next > period) {
                next = t; /* behind by more than a period: skip, no burst */
            }
            next += period;
            if (now() >= stop_at) break;
        }
        size_t off = offsets[i % count];
        size_t len = ((size_t)blob[off] << 8) | blob[off + 1];
        memcpy(query, blob + off, len + 2);
        id++;
        query[2] = id >> 8;
        query[3] = id & 0xff;
        i++;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            atomic_fetch_add(&lost, 1);
            usleep(1000);
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        unsigned char head[2];
        int ok = connect(fd, (struct sockaddr *)&server, sizeof server) == 0 &&
                 send(fd, query, len + 2, MSG_NOSIGNAL) == (ssize_t)(len + 2) &&
                 read_full(fd, head, 2) == 0;
        if (ok) {
            size_t alen = ((size_t)head[0] << 8) | head[1];
            ok = alen >= 12 && read_full(fd, answer, alen) == 0 && answer[0] == query[2] &&
                 answer[1] == query[3];
        }
        close(fd);
        atomic_fetch_add(ok ? &completed : &lost, 1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s ADDR PORT QUERIES.blob THREADS SECONDS [RATE]\n", argv[0]);
        return 2;
    }
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    FILE *f = fopen(argv[3], "rb");
    if (!f) {
        perror(argv[3]);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    blob = malloc((size_t)size);
    if (!blob || fread(blob, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "cannot read %s\n", argv[3]);
        return 2;
    }
    fclose(f);
    offsets = malloc(sizeof *offsets * ((size_t)size / 14 + 1));
    for (size_t off = 0; off + 2 <= (size_t)size;) {
        size_t len = ((size_t)blob[off] << 8) | blob[off + 1];
        if (len < 12 || off + 2 + len > (size_t)size) break;
        offsets[count++] = off;
        off += 2 + len;
    }
    if (count == 0) {
        fprintf(stderr, "no queries in %s\n", argv[3]);
        return 2;
    }
    int threads = atoi(argv[4]);
    double seconds = atof(argv[5]);
    double rate = argc == 7 ? atof(argv[6]) : 0;
    if (threads < 1 || seconds <= 0 || rate < 0) {
        fprintf(stderr, "THREADS >= 1, SECONDS > 0, RATE >= 0\n");
        return 2;
    }
    nthreads = threads;
    period = rate > 0 ? threads / rate : 0;
    pthread_t *t = calloc((size_t)threads, sizeof *t);
    double start = now();
    start_at = start;
    stop_at = start + seconds;
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    double run = now() - start;
    unsigned long c = atomic_load(&completed), l = atomic_load(&lost);
    printf("  Queries sent:         %lu\n", c + l);
    printf("  Queries completed:    %lu\n", c);
    printf("  Queries lost:         %lu\n", l);
    printf("  Run time (s):         %f\n", run);
    printf("  Queries per second:   %f\n", c / run);
    return 0;
}
