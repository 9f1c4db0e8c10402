/* The internal id map, tested directly through the static library. */
#include "check.h"
#include "idmap.h"

static void put_get_delete(void) {
    idmap m = {0};
    static int vals[100000];
    for (uint64_t k = 1; k <= 100000; k++)
        REQUIRE(edrv__idmap_put(&m, k * 7919, &vals[k - 1]) == 0);
    CHECK_INT(m.live, 100000);
    for (uint64_t k = 1; k <= 100000; k++)
        CHECK(edrv__idmap_get(&m, k * 7919) == &vals[k - 1]);
    CHECK(edrv__idmap_get(&m, 3) == NULL);
    /* Remove every other key: the rest stay reachable past the tombstones. */
    for (uint64_t k = 1; k <= 100000; k += 2)
        CHECK(edrv__idmap_del(&m, k * 7919) == &vals[k - 1]);
    CHECK(edrv__idmap_del(&m, 7919) == NULL);
    for (uint64_t k = 2; k <= 100000; k += 2)
        CHECK(edrv__idmap_get(&m, k * 7919) == &vals[k - 1]);
    size_t seen = 0;
    for (size_t i = 0; i < m.cap; i++)
        seen += edrv__idmap_at(&m, i) != NULL;
    CHECK_INT(seen, 50000);
    for (uint64_t k = 2; k <= 100000; k += 2)
        edrv__idmap_del(&m, k * 7919);
    CHECK_INT(m.live, 0);
    CHECK(edrv__idmap_get(&m, 2 * 7919) == NULL);
    edrv__idmap_free(&m);
    CHECK(m.slots == NULL && m.cap == 0);
}

static void churn(void) {
    /* Keys come and go, as job ids do: the table stays small. */
    idmap m = {0};
    int v;
    for (uint64_t k = 1; k <= 1000000; k++) {
        REQUIRE(edrv__idmap_put(&m, k, &v) == 0);
        if (k > 10)
            CHECK(edrv__idmap_del(&m, k - 10) == &v);
    }
    CHECK_INT(m.live, 10);
    CHECK(m.cap <= 64);
    edrv__idmap_free(&m);
}

static const test_case cases[] = {
    {"put_get_delete", put_get_delete},
    {"churn", churn},
    {NULL, NULL},
};

TEST_MAIN(cases)
