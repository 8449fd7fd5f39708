/*
 * The standard process metrics (the names every Prometheus client uses,
 * so stock dashboards and alerts work): read from /proc/self at render.
 */
#include "cp/base.h"
#include "cp/metrics.h"
#include "metrics-int.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>

typedef struct process_metrics {
        cp_gauge *rss, *vsize, *open_fds, *max_fds;
} process_metrics;

/* Reads a small /proc file into buf (NUL-terminated); -errno on failure. */
static int read_small(const char *path, char *buf, size_t size) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n;

        if (fd < 0)
                return -errno;
        n = read(fd, buf, size - 1);
        (void) close(fd);
        if (n < 0)
                return -errno;
        buf[n] = '\0';
        return 0;
}

/* The fields of /proc/self/stat after "(comm)", from state (field 3) on:
 * index i is field i + 3 of proc(5). The command name may hold spaces and
 * parentheses, so the split starts after the last ')'. */
#define STAT_STARTTIME 19
#define STAT_VSIZE 20
#define STAT_RSS 21

static int read_stat(unsigned long long out[STAT_RSS + 1]) {
        char buf[1024];
        char *p, *end;
        int r = read_small("/proc/self/stat", buf, sizeof buf);

        if (r < 0)
                return r;
        p = strrchr(buf, ')');
        if (!p)
                return -EINVAL;
        p++;
        for (int i = 0; i <= STAT_RSS; i++) {
                while (*p == ' ')
                        p++;
                if (i == 0) {           /* the state letter */
                        out[0] = (unsigned char) *p;
                        while (*p && *p != ' ')
                                p++;
                        continue;
                }
                out[i] = strtoull(p, &end, 10);
                if (end == p)
                        return -EINVAL;
                p = end;
        }
        return 0;
}

/* Unix seconds the process started: boot time + starttime ticks. */
static double start_time(void) {
        unsigned long long st[STAT_RSS + 1];
        char buf[4096];
        const char *bt;
        long ticks = sysconf(_SC_CLK_TCK);

        if (read_stat(st) < 0 || ticks <= 0 || read_small("/proc/stat", buf, sizeof buf) < 0)
                return 0;
        bt = strstr(buf, "\nbtime ");
        if (!bt)
                return 0;
        return (double) strtoull(bt + 7, NULL, 10) + (double) st[STAT_STARTTIME] / (double) ticks;
}

static double count_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        double n = 0;

        if (!d)
                return 0;
        while ((e = readdir(d)))
                if (e->d_name[0] != '.')
                        n++;
        (void) closedir(d);
        return n > 0 ? n - 1 : 0;       /* not the one opendir() holds */
}

static void collect(cp_metrics *m, void *userdata) {
        process_metrics *pm = userdata;
        unsigned long long st[STAT_RSS + 1];
        struct rlimit rl;

        if (read_stat(st) == 0) {
                cp_gauge_set(pm->vsize, (double) st[STAT_VSIZE]);
                cp_gauge_set(pm->rss, (double) st[STAT_RSS] * (double) sysconf(_SC_PAGESIZE));
        }
        cp_gauge_set(pm->open_fds, count_fds());
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
                cp_gauge_set(pm->max_fds, rl.rlim_cur == RLIM_INFINITY ? -1 : (double) rl.rlim_cur);
}

void cp_metrics_add_process_collector(cp_metrics *m) {
        process_metrics *pm;

        if (!cp_metrics__claim_process_collector(m))
                return;
        /* Lives as long as the registry: freed with it (a private registry)
         * or never (the global one). */
        pm = cp_metrics__keep(m, sizeof *pm);
        cp_gauge_set(cp_metrics_plain_gauge(m, "process_start_time_seconds",
                                            "Start time of the process since unix epoch in seconds."),
                     start_time());
        pm->rss = cp_metrics_plain_gauge(m, "process_resident_memory_bytes", "Resident memory size in bytes.");
        pm->vsize = cp_metrics_plain_gauge(m, "process_virtual_memory_bytes", "Virtual memory size in bytes.");
        pm->open_fds = cp_metrics_plain_gauge(m, "process_open_fds", "Number of open file descriptors.");
        pm->max_fds = cp_metrics_plain_gauge(m, "process_max_fds", "Maximum number of open file descriptors.");
        cp_metrics_add_collector(m, collect, pm);
}
