#include "check.h"
static const test_case cases[] = {{NULL, NULL}};
TEST_MAIN(cases)
