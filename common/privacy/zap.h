/* zap.h - a ZeroMQ ZAP handler (RFC 27) that admits only allowlisted CURVE keys.
 *
 * libzmq asks "inproc://zeromq.zap.01" of a socket's context about every
 * client that connects to a CURVE server socket with a ZAP domain
 * (wire_router_bind_curve). This handler runs in its own thread with its own
 * REP socket bound there, so the coordinator's poll loop never waits on it.
 * For each request it checks the version ("1.0"), the domain (ZAP_DOMAIN)
 * and the mechanism ("CURVE"), then looks the client's 32-byte public key up
 * in the allowlist (keys.h). The reply echoes the request id with status
 * "200" and user id = the key's name in the allowlist, or "400" with a reason.
 * Every refusal is logged with the key's Z85 and the peer's address, and
 * counted.
 *
 * The allowlist is re-read when *reload becomes non-zero (the coordinator's
 * SIGHUP handler sets it; the ZAP thread clears it and applies it within
 * ZAP_POLL_MS). A new file that does not parse keeps the old list, and the
 * log says why.
 */
#ifndef FP_ZAP_H
#define FP_ZAP_H

#include <stdatomic.h>
#include <stdint.h>

#include "fp_error.h"
#include "keys.h"

/* The ZAP domain the coordinator's ROUTER announces (common/wire/wire.c). */
#define ZAP_DOMAIN "fedpeft"
#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_POLL_MS 100

typedef struct fp_zap fp_zap;

/* One log line, without a newline (called from the ZAP thread). */
typedef void (*fp_zap_log_fn)(const char *line);

/* Loads allowlist_path, binds the REP socket in zctx and starts the thread.
 * Call before binding the CURVE ROUTER. reload may be NULL (no reloads); it
 * and log must outlive the handler. NULL with an error (allowlist unreadable,
 * a second handler in the same context). Caller stops it. */
fp_zap *fp_zap_start(void *zctx, const char *allowlist_path, atomic_int *reload,
                     fp_zap_log_fn log) FP_WUR;
/* Stops the thread and closes its socket (before zmq_ctx_term), frees the
 * list. NULL-safe; sets *zap_p = NULL. */
void fp_zap_stop(fp_zap **zap_p);

/* Keys refused since the start (any thread). */
uint64_t fp_zap_refused(const fp_zap *zap);
/* Keys in the allowlist now. */
uint64_t fp_zap_n_keys(const fp_zap *zap);
/* Successful reloads so far: a change tells the caller to re-check its peers. */
uint64_t fp_zap_generation(const fp_zap *zap);
/* 1 when worker id (a ZAP User-Id) is in the current allowlist, with its
 * policy in *pol (may be NULL); 0 when it is not (removed by a reload). Any
 * thread. */
int fp_zap_lookup(fp_zap *zap, const char *id, fp_allow_policy *pol);

#endif
