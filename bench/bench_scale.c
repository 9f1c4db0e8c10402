/*
 * bench_scale: edrv's own limits, beside the peer table: the pool's memory
 * per queued job, many open ports, and what an idle runtime costs.
 *
 * Usage: bench_scale N QUEUED PORTS
 *   Starts edrv with N pool threads and a static driver, "hold", whose jobs
 *   wait at a gate. One control call submits QUEUED jobs without a key: N of
 *   them block at the gate, one per pool thread, and the rest stay queued.
 *   edrv_memory() before and after gives the pool's bytes per queued job
 *   (the jobs carry no data of their own, so every byte is the pool's). Then
 *   PORTS more ports open, the gate opens, every job ends, and the ports
 *   close. Last, the runtime idles for IDLE_S seconds after a one-second
 *   settle, and getrusage() tells the CPU time the process used meanwhile.
 * Prints `RESULT edrv scale METRIC VALUE` lines.
 */
#include <edrv.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define IDLE_S 3

static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int gate_open;

static void hold_invoke(void *data) {
    (void)data;
    pthread_mutex_lock(&gate_lock);
    while (!gate_open)
        pthread_cond_wait(&gate_cond, &gate_lock);
    pthread_mutex_unlock(&gate_lock);
}

static ErlDrvData hold_start(ErlDrvPort port, char *cmd) {
    (void)cmd;
    return (ErlDrvData)port;
}

/* op 1: submits the count in data (4 bytes, big-endian) jobs; reply empty. */
static ErlDrvSSizeT hold_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                                 char **rbuf, ErlDrvSizeT rlen) {
    (void)rbuf;
    (void)rlen;
    if (op != 1 || len != 4)
        return -1;
    const unsigned char *u = (const unsigned char *)buf;
    unsigned count = (unsigned)u[0] << 24 | (unsigned)u[1] << 16 | (unsigned)u[2] << 8 | u[3];
    for (unsigned i = 0; i < count; i++)
        if (driver_async((ErlDrvPort)d, NULL, hold_invoke, NULL, NULL) < 0)
            return -1;
    return 0;
}

static ErlDrvEntry hold_entry = {
    .start = hold_start,
    .driver_name = "hold",
    .control = hold_control,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

static size_t mem_total(void) {
    edrv_mem_stats m;
    edrv_memory(&m);
    size_t t = 0;
    for (int i = 0; i < EDRV_MEM_TYPES; i++)
        t += m.bytes[i];
    return t;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static int fail(const char *what, int rc) {
    fprintf(stderr, "bench_scale: %s: %s %s\n", what, edrv_err_name(rc), edrv_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: bench_scale N QUEUED PORTS\n");
        return 2;
    }
    int n = atoi(argv[1]);
    unsigned queued = (unsigned)strtoul(argv[2], NULL, 10);
    unsigned nports = (unsigned)strtoul(argv[3], NULL, 10);
    if (n < 1 || !queued || !nports) {
        fprintf(stderr, "bench_scale: N, QUEUED and PORTS must be positive\n");
        return 2;
    }
    int rc = edrv_start(&(edrv_options){.async_threads = n});
    if (rc < 0)
        return fail("edrv_start", rc);
    edrv_proc *p = edrv_proc_new();
    edrv_port port;
    if (!p)
        return fail("edrv_proc_new", EDRV_ENOMEM);
    if ((rc = edrv_register_driver(&hold_entry)) < 0 || (rc = edrv_open_port(p, "hold", 0, &port)) < 0)
        return fail("open hold", rc);

    /* Queued jobs: the pool's memory per job. */
    size_t before = mem_total();
    char data[4] = {(char)(queued >> 24), (char)(queued >> 16), (char)(queued >> 8), (char)queued};
    edrv_reply reply;
    uint64_t t0 = bench_now_ns();
    rc = edrv_port_control(p, port, 1, data, sizeof data, &reply);
    uint64_t t1 = bench_now_ns();
    edrv_reply_free(&reply);
    if (rc < 0)
        return fail("submitting", rc);
    size_t after = mem_total();

    edrv_pool_stats st;
    edrv_pool(&st);
    printf("RESULT edrv scale queued_jobs %llu\n",
           (unsigned long long)(st.submitted - st.started - st.cancelled));
    printf("RESULT edrv scale pool_bytes_per_job %.1f\n", (double)(after - before) / queued);
    printf("RESULT edrv scale submit_ns_per_job %.1f\n", (double)(t1 - t0) / queued);

    /* Many ports, with the jobs still queued. */
    edrv_port *ports = malloc(nports * sizeof *ports);
    if (!ports)
        return 1;
    before = mem_total();
    t0 = bench_now_ns();
    for (unsigned i = 0; i < nports; i++)
        if ((rc = edrv_open_port(p, "hold", 0, &ports[i])) < 0)
            return fail("opening ports", rc);
    t1 = bench_now_ns();
    printf("RESULT edrv scale open_ports %u\n", nports + 1);
    printf("RESULT edrv scale port_bytes %.1f\n", (double)(mem_total() - before) / nports);
    printf("RESULT edrv scale open_us_per_port %.2f\n", (double)(t1 - t0) / nports / 1e3);

    /* The gate opens: every job ends (with free: hold has no ready_async). */
    pthread_mutex_lock(&gate_lock);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
    t0 = bench_now_ns();
    do {
        usleep(1000);
        edrv_pool(&st);
    } while (st.freed + st.ready_async < st.submitted);
    printf("RESULT edrv scale drain_ns_per_job %.1f\n", (double)(bench_now_ns() - t0) / queued);
    for (unsigned i = 0; i < nports; i++)
        edrv_port_close(p, ports[i]);
    free(ports);

    /* Idle: the spins end, spare memory goes back, and then nothing runs. */
    sleep(1);
    double c0 = cpu_s();
    t0 = bench_now_ns();
    sleep(IDLE_S);
    double secs = (double)(bench_now_ns() - t0) / 1e9;
    printf("RESULT edrv scale idle_cpu_ms_per_s %.3f\n", (cpu_s() - c0) * 1e3 / secs);
    printf("RESULT edrv scale idle_bytes %zu\n", mem_total());


    edrv_port_close(p, port);
    edrv_proc_free(p);
    return edrv_stop() < 0;
}
