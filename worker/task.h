/* task.h - the worker's side of a round: receive a Task and its adapter
 * chunks, train (TRAIN) or evaluate (EVAL), report, and upload the update
 * when the coordinator pulls it. See docs/protocol.md.
 *
 * TRAIN: start from the received global adapter; fp_finetune with the Task's
 * params (batch overridable by [worker] batch), constant schedule, shuffled
 * rows, seed = params.seed ^ fp_fnv1a64(worker id) ^ (round * 0x9E3779B97F4A7C15)
 * and first_step = (round - 1) * local_steps, so a round replays identically
 * after a coordinator restart. The update is trained - global. While training,
 * the progress callback heartbeats and reads the socket: a new Task, a
 * SHUTDOWN, a re-registration or a signal abandons the round.
 * EVAL: fp_evaluate of the global adapter on the validation split, T =
 * params.seq -> EvalResult(loss, target tokens).
 * flora: the Task's folds are added to `model`'s weights first (folds.h).
 */
#ifndef FP_WK_TASK_H
#define FP_WK_TASK_H

#include "connection.h"
#include "data.h"
#include "fp_error.h"
#include "model.h"
#include "worker_config.h"

/* Serves tasks until the run ends. 0 on SHUTDOWN or stop (exit 0); -1 with
 * an error on a fatal problem (refused, coordinator gone for good: exit 1). */
int wk_serve(wk_conn *conn, const wk_config *cfg, fp_model *model,
             const fp_dataset *data) FP_WUR;


#endif
