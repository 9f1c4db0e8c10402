/* Memory: driver_alloc, binaries and their reference counts, per-type
 * statistics, fault injection. */
#include "check.h"

#include <errno.h>

static edrv_mem_stats stats(void) {
    edrv_mem_stats st;
    edrv_memory(&st);
    return st;
}

static void driver_alloc_counts(void) {
    edrv_mem_stats a = stats();
    char *p = driver_alloc(100);
    REQUIRE(p);
    edrv_mem_stats b = stats();
    CHECK_INT(b.bytes[EDRV_MEM_DRIVER] - a.bytes[EDRV_MEM_DRIVER], 100);
    CHECK_INT(b.blocks[EDRV_MEM_DRIVER] - a.blocks[EDRV_MEM_DRIVER], 1);
    memset(p, 1, 100);
    p = driver_realloc(p, 5000);
    REQUIRE(p);
    CHECK(p[99] == 1);
    b = stats();
    CHECK_INT(b.bytes[EDRV_MEM_DRIVER] - a.bytes[EDRV_MEM_DRIVER], 5000);
    CHECK_INT(b.blocks[EDRV_MEM_DRIVER] - a.blocks[EDRV_MEM_DRIVER], 1);
    driver_free(p);
    driver_free(NULL);
    b = stats();
    CHECK_INT(b.bytes[EDRV_MEM_DRIVER], a.bytes[EDRV_MEM_DRIVER]);
    CHECK_STR(edrv_mem_type_name(EDRV_MEM_DRIVER), "driver");
    CHECK_STR(edrv_mem_type_name(EDRV_MEM_BINARY), "binary");
    CHECK_STR(edrv_mem_type_name((edrv_mem_type)99), "unknown");
}

static void binaries(void) {
    edrv_mem_stats a = stats();
    ErlDrvBinary *b = driver_alloc_binary(10);
    REQUIRE(b);
    CHECK_INT(b->orig_size, 10);
    CHECK_INT(driver_binary_get_refc(b), 1);
    CHECK_INT(driver_binary_inc_refc(b), 2);
    CHECK_INT(stats().blocks[EDRV_MEM_BINARY] - a.blocks[EDRV_MEM_BINARY], 1);
    memcpy(b->orig_bytes, "0123456789", 10);
    /* Shared: realloc copies, and the caller's reference moves to the copy. */
    ErlDrvBinary *c = driver_realloc_binary(b, 20);
    REQUIRE(c);
    CHECK(c != b);
    CHECK_INT(c->orig_size, 20);
    CHECK(memcmp(c->orig_bytes, "0123456789", 10) == 0);
    CHECK_INT(driver_binary_get_refc(b), 1);
    CHECK_INT(driver_binary_get_refc(c), 1);
    driver_free_binary(b);
    /* Not shared: realloc may move it in place. */
    c = driver_realloc_binary(c, 4);
    REQUIRE(c);
    CHECK_INT(c->orig_size, 4);
    CHECK(memcmp(c->orig_bytes, "0123", 4) == 0);
    driver_free_binary(c);
    driver_free_binary(NULL);
    ErlDrvBinary *z = driver_alloc_binary(0);
    REQUIRE(z);
    CHECK_INT(z->orig_size, 0);
    driver_free_binary(z);
    CHECK_INT(stats().blocks[EDRV_MEM_BINARY], a.blocks[EDRV_MEM_BINARY]);
    volatile ErlDrvSizeT huge = (ErlDrvSizeT)-1; /* hidden from the compiler's checks */
    CHECK(driver_alloc_binary(huge) == NULL);
    CHECK(driver_alloc(huge) == NULL);
}

static void fault_injection(void) {
    edrv_testing_fail_alloc(2);
    void *a = driver_alloc(8), *b = driver_alloc(8), *c = driver_alloc(8);
    CHECK(a != NULL);
    CHECK(b == NULL);
    CHECK(c != NULL);
    driver_free(a);
    driver_free(c);
    edrv_testing_fail_alloc(0);
}

static void port_and_message_types(void) {
    edrv_proc *p = edrv_proc_new();
    edrv_port port;
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_mem_stats a = stats();
    REQUIRE(edrv_open_port(p, "tdrv", 0, &port) == 0);
    edrv_mem_stats b = stats();
    CHECK_INT(b.blocks[EDRV_MEM_PORT] - a.blocks[EDRV_MEM_PORT], 2); /* the port, its name */
    CHECK(b.bytes[EDRV_MEM_DRIVER] > a.bytes[EDRV_MEM_DRIVER]); /* the driver's state */
    REQUIRE(edrv_port_command(p, port, "abc", 3) == 0);
    edrv_msg m;
    REQUIRE(edrv_receive(p, CHECK_WAIT_MS, &m) == 0);
    b = stats();
    CHECK_INT(b.blocks[EDRV_MEM_MESSAGE] - a.blocks[EDRV_MEM_MESSAGE], 1);
    edrv_msg_free(&m);
    edrv_msg_free(&m); /* released twice: harmless */
    CHECK_INT(stats().blocks[EDRV_MEM_MESSAGE], a.blocks[EDRV_MEM_MESSAGE]);
    /* Undelivered messages are freed with their process. */
    REQUIRE(edrv_port_command(p, port, "abc", 3) == 0);
    REQUIRE(edrv_port_close(p, port) == 0);
    edrv_proc_free(p);
    b = stats();
    CHECK_INT(b.blocks[EDRV_MEM_MESSAGE], a.blocks[EDRV_MEM_MESSAGE]);
    CHECK_INT(b.blocks[EDRV_MEM_PORT], a.blocks[EDRV_MEM_PORT]);
}

static void open_port_out_of_memory(void) {
    /* Every allocation on the way to an open port can fail: each gives a
     * clear error and leaves nothing behind. */
    edrv_proc *p = edrv_proc_new();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    int failures = 0;
    for (long n = 1; n < 10; n++) {
        edrv_port port = 0;
        edrv_testing_fail_alloc(n);
        int rc = edrv_open_port(p, "tdrv", 0, &port);
        edrv_testing_fail_alloc(0);
        if (rc == 0) {
            CHECK_INT(edrv_port_close(p, port), 0);
            edrv_msg m;
            while (edrv_receive(p, 0, &m) == 0)
                edrv_msg_free(&m);
        } else {
            CHECK(rc == EDRV_ENOMEM || rc == -EINVAL);
            failures++;
        }
    }
    CHECK(failures > 0);
    edrv_proc_free(p);
}

static void allocator(void) {
    /* EDRV_TEST_ALLOCATOR: what this build and environment must have chosen
     * (tests/CMakeLists.txt runs this case with several EDRV_MALLOC). */
    const char *want = getenv("EDRV_TEST_ALLOCATOR");
    REQUIRE(want);
    CHECK_STR(edrv_allocator(), want);
    /* Blocks of every size, resized across the small and large classes. */
    char *p = driver_alloc(1);
    REQUIRE(p);
    for (size_t n = 2; n <= (size_t)1 << 22; n *= 4) {
        p = driver_realloc(p, n);
        REQUIRE(p);
        p[n - 1] = 1;
    }
    driver_free(p);
}

static const test_case cases[] = {
    {"driver_alloc_counts", driver_alloc_counts},
    {"binaries", binaries},
    {"fault_injection", fault_injection},
    {"port_and_message_types", port_and_message_types},
    {"open_port_out_of_memory", open_port_out_of_memory},
    {"allocator", allocator},
    {NULL, NULL},
};

TEST_MAIN(cases)
