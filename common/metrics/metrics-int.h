/*
 * metrics-int.h: what metrics.c shares with metrics-process.c; not exported.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "cp/metrics.h"

/* True the first time per registry: the caller adds the process collector. */
bool cp_metrics__claim_process_collector(cp_metrics *m);

/* size zeroed bytes that live as long as m (freed by cp_metrics_free). */
void *cp_metrics__keep(cp_metrics *m, size_t size);
