#include "cp/base.h"
#include "cp/util.h"

#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>

int64_t cp_now_unix_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t) ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t cp_now_mono_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

void cp_mono_deadline(struct timespec *ts, int64_t ms) {
        clock_gettime(CLOCK_MONOTONIC, ts);
        ts->tv_sec += ms / 1000;
        ts->tv_nsec += (ms % 1000) * 1000000L;
        if (ts->tv_nsec >= 1000000000L) {
                ts->tv_sec++;
                ts->tv_nsec -= 1000000000L;
        }
}

void cp_random_bytes(void *buf, size_t n) {
        uint8_t *p = buf;

        while (n > 0) {
                ssize_t r = getrandom(p, n, 0);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        abort();
                }
                p += r;
                n -= (size_t) r;
        }
}

uint64_t cp_random_uniform(uint64_t bound) {
        /* Rejection sampling avoids modulo bias. */
        uint64_t limit = UINT64_MAX - UINT64_MAX % bound, v;

        do
                cp_random_bytes(&v, sizeof v);
        while (v >= limit);
        return v % bound;
}

void cp_id_new(char out[CP_ID_LEN + 1]) {
        static const char alphabet[] = "0123456789abcdefghijklmnopqrstuv";
        uint8_t raw[12];
        uint32_t secs = (uint32_t) time(NULL);

        raw[0] = (uint8_t) (secs >> 24);
        raw[1] = (uint8_t) (secs >> 16);
        raw[2] = (uint8_t) (secs >> 8);
        raw[3] = (uint8_t) secs;
        cp_random_bytes(raw + 4, 8);

        /* 96 bits -> 20 symbols of 5 bits (the last one carries 1 bit). */
        unsigned bitpos = 0;
        for (size_t i = 0; i < CP_ID_LEN; i++, bitpos += 5) {
                unsigned v = 0;
                for (unsigned b = 0; b < 5; b++) {
                        unsigned pos = bitpos + b;
                        v <<= 1;
                        if (pos < 96)
                                v |= (raw[pos / 8] >> (7 - pos % 8)) & 1u;
                }
                out[i] = alphabet[v];
        }
        out[CP_ID_LEN] = '\0';
}

int cp_parse_int64(const char *s, int64_t min, int64_t max, int64_t *ret) {
        char *end;
        long long v;

        if (!s || !*s)
                return -EINVAL;
        errno = 0;
        v = strtoll(s, &end, 10);
        if (*end != '\0' || end == s)
                return -EINVAL;
        if (errno == ERANGE || v < min || v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

int cp_parse_bool(const char *s, bool *ret) {
        static const char *const yes[] = { "1", "true", "yes", "on" };
        static const char *const no[] = { "0", "false", "no", "off" };

        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
        for (size_t i = 0; i < ELEMENTSOF(no); i++)
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        return -EINVAL;
}

int cp_parse_duration_ms(const char *s, int64_t *ret) {
        static const struct { const char *suffix; int64_t ms; } units[] = {
                { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
        };
        int64_t total = 0;
        const char *p = s;

        if (!s || !*s)
                return -EINVAL;
        /* A bare integer means seconds. */
        if (cp_parse_int64(s, 0, INT64_MAX / 1000, &total) == 0) {
                *ret = total * 1000;
                return 0;
        }
        while (*p) {
                char *end;
                errno = 0;
                long long v = strtoll(p, &end, 10);
                if (end == p || v < 0 || errno == ERANGE)
                        return -EINVAL;
                p = end;
                int64_t mult = 0;
                size_t best = 0;
                for (size_t i = 0; i < ELEMENTSOF(units); i++) {
                        size_t l = strlen(units[i].suffix);
                        if (strncmp(p, units[i].suffix, l) == 0 && l > best) {
                                best = l;
                                mult = units[i].ms;
                        }
                }
                if (!mult)
                        return -EINVAL;
                if (v > (INT64_MAX - total) / mult)
                        return -ERANGE;
                total += v * mult;
                p += best;
        }
        *ret = total;
        return 0;
}

void cp_format_rfc3339(int64_t unix_ns, char buf[32]) {
        time_t secs = (time_t) (unix_ns / 1000000000LL);
        long usec = (long) ((unix_ns % 1000000000LL) / 1000);
        struct tm tm;

        gmtime_r(&secs, &tm);
        size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
        (void) snprintf(buf + n, 32 - n, ".%06ldZ", usec);
}

int cp_core_dumps_disable(void) {
        const char *allow = getenv(CP_CORE_DUMPS_ENV);
        struct rlimit none = { 0, 0 };

        if (allow && strcmp(allow, "1") == 0)
                return 1;
        if (setrlimit(RLIMIT_CORE, &none) < 0)
                return -errno;
        if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
                return -errno;
        return 0;
}
