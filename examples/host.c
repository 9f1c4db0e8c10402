/*
 * host: a C program acting as an Erlang process through edrv.h. It loads the
 * echo driver, opens a port, sends it data, controls it, closes it, and prints
 * every message it receives in Erlang syntax, and the memory edrv used.
 *
 *   host [DRIVER_DIR] [WORDS...]
 */
#include <edrv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef EDRV_EXAMPLE_DRIVERS
#define EDRV_EXAMPLE_DRIVERS "."
#endif

static int fail(const char *what, int rc) {
    fprintf(stderr, "host: %s: %s (%s)\n", what, edrv_err_name(rc), edrv_last_error());
    return 1;
}

static void print_messages(edrv_proc *p) {
    edrv_msg m;
    while (edrv_receive(p, 100, &m) == 0) {
        char *text;
        if (edrv_term_format(m.data, m.len, &text) >= 0) {
            printf("received  %s\n", text);
            free(text);
        }
        edrv_msg_free(&m);
    }
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : EDRV_EXAMPLE_DRIVERS;
    int rc = edrv_start(NULL);
    if (rc < 0)
        return fail("edrv_start", rc);
    edrv_proc *self = edrv_proc_new();
    /* Trap exits, as an Erlang shell's process would to see them: the
     * port's exit comes as {'EXIT', Port, normal} after port_close. */
    edrv_process_flag(self, EDRV_TRAP_EXIT, 1);
    if ((rc = edrv_load_driver(dir, "echo_drv")) < 0)
        return fail("load echo_drv", rc);
    printf("loaded    echo_drv from %s\n", dir);

    edrv_port port;
    if ((rc = edrv_open_port(self, "echo_drv", EDRV_PORT_BINARY, &port)) < 0)
        return fail("open_port", rc);
    printf("opened    #Port<0.%llu> as <0.%llu.0>\n", (unsigned long long)port,
           (unsigned long long)edrv_proc_pid(self));

    const char *words[] = {"hello", "from", "edrv"};
    int nwords = argc > 2 ? argc - 2 : 3;
    for (int i = 0; i < nwords; i++) {
        const char *w = argc > 2 ? argv[i + 2] : words[i];
        if ((rc = edrv_port_command(self, port, w, strlen(w))) < 0)
            return fail("port_command", rc);
    }
    print_messages(self);

    edrv_reply r;
    if ((rc = edrv_port_control(self, port, 1, "shout", 5, &r)) < 0)
        return fail("port_control", rc);
    printf("control 1 -> %.*s\n", (int)r.len, r.data);
    edrv_reply_free(&r);
    if ((rc = edrv_port_control(self, port, 2, "", 0, &r)) < 0)
        return fail("port_control", rc);
    printf("control 2 -> %.*s bytes echoed\n", (int)r.len, r.data);
    edrv_reply_free(&r);
    rc = edrv_port_control(self, port, 99, "", 0, &r);
    printf("control 99 -> %s (%s)\n", edrv_err_name(rc), edrv_last_error());

    edrv_port_close(self, port);
    print_messages(self);

    edrv_mem_stats st;
    edrv_memory(&st);
    printf("memory   ");
    for (int i = 0; i < EDRV_MEM_TYPES; i++)
        printf(" %s %zu B/%zu", edrv_mem_type_name((edrv_mem_type)i), st.bytes[i], st.blocks[i]);
    printf("\n");
    edrv_proc_free(self);
    edrv_stop();
    return 0;
}
