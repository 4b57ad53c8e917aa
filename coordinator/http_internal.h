/* http_internal.h - shared by http.c (daemon, renderers), http_state.c (the
 * publisher, on the event loop) and http_page.c (the page). Not for others. */
#ifndef COORD_HTTP_INTERNAL_H
#define COORD_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>

#include "http.h"

struct http_server {
    struct MHD_Daemon *d;
    int fd;
    pthread_mutex_t mu;         /* guards snap */
    http_snapshot snap;
    /* The publisher's own state: event-loop thread only. */
    size_t parsed_lines;        /* metrics lines already in snap.hist */
    int64_t last_publish_ms;
    uint64_t last_round;
    int last_phase, last_workers, last_live;
    uint64_t hist_rejected[REJ_COUNT], hist_up, hist_down;
};

/* The page around its inlined first /status (http_page.c). */
extern const char http_page_head[];
extern const char http_page_tail[];

#endif
