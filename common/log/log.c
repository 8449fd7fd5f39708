#include "cp/base.h"
#include "cp/log.h"
#include "cp/strbuf.h"
#include "cp/util.h"

#include <fcntl.h>
#include <stdatomic.h>

static atomic_int log_level = CP_LOG_INFO;
static int log_fd = STDOUT_FILENO;

static const char *const level_names[] = {
        [CP_LOG_TRACE] = "trace", [CP_LOG_DEBUG] = "debug", [CP_LOG_INFO] = "info",
        [CP_LOG_WARN] = "warn",   [CP_LOG_ERROR] = "error", [CP_LOG_FATAL] = "fatal",
        [CP_LOG_PANIC] = "panic",
};

int cp_log_open(const char *target, cp_log_level level, cp_error *reterr) {
        int fd;

        if (!target || strcmp(target, "console") == 0 || strcmp(target, "stdout") == 0)
                fd = STDOUT_FILENO;
        else if (strcmp(target, "stderr") == 0)
                fd = STDERR_FILENO;
        else {
                fd = open(target, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
                if (fd < 0)
                        return cp_error_set(reterr, -errno, "cannot open log file %s: %s", target, strerror(errno));
        }
        cp_log_close();
        log_fd = fd;
        cp_log_set_level(level);
        return 0;
}

void cp_log_close(void) {
        if (log_fd > STDERR_FILENO)
                (void) close(log_fd);
        log_fd = STDOUT_FILENO;
}

void cp_log_set_level(cp_log_level level) {
        atomic_store(&log_level, (int) level);
}

bool cp_log_enabled(cp_log_level level) {
        return (int) level >= atomic_load(&log_level);
}

int cp_log_level_parse(const char *s, cp_log_level *ret) {
        if (s && strcasecmp(s, "warning") == 0) {
                *ret = CP_LOG_WARN;
                return 0;
        }
        for (size_t i = 0; s && i < ELEMENTSOF(level_names); i++)
                if (strcasecmp(s, level_names[i]) == 0) {
                        *ret = (cp_log_level) i;
                        return 0;
                }
        return -EINVAL;
}

const char *cp_log_level_name(cp_log_level level) {
        return (size_t) level < ELEMENTSOF(level_names) ? level_names[level] : "unknown";
}

static void add_field(cp_strbuf *sb, const char *key, const char *value) {
        if (!value)
                return;
        cp_strbuf_adds(sb, ",\"");
        cp_strbuf_add_json_escaped(sb, key);
        cp_strbuf_adds(sb, "\":\"");
        cp_strbuf_add_json_escaped(sb, value);
        cp_strbuf_addch(sb, '"');
}

static void begin_line(cp_strbuf *sb, const cp_log_ctx *ctx, cp_log_level level, const char *msg) {
        char ts[32];

        /* Most lines fit: one allocation instead of a chain of reallocs. */
        cp_strbuf_grow(sb, 512);
        cp_format_rfc3339(cp_now_unix_ns(), ts);
        cp_strbuf_addf(sb, "{\"time\":\"%s\",\"level\":\"%s\"", ts, cp_log_level_name(level));
        if (ctx)
                add_field(sb, "component", ctx->component);
        add_field(sb, "msg", msg);
        if (ctx) {
                add_field(sb, "request_id", ctx->request_id);
                add_field(sb, "method", ctx->method);
                add_field(sb, "peer", ctx->peer);
                add_field(sb, "account", ctx->account);
                add_field(sb, "action", ctx->action);
        }
}

static void end_line(cp_strbuf *sb) {
        cp_strbuf_adds(sb, "}\n");
        /* One write per line keeps lines whole across threads. */
        (void) !write(log_fd, sb->buf, sb->len);
        cp_strbuf_release(sb);
}

void cp_log(const cp_log_ctx *ctx, cp_log_level level, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        cp_strbuf sb;
        va_list ap;

        if (!cp_log_enabled(level))
                return;
        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        cp_strbuf_init(&sb);
        begin_line(&sb, ctx, level, msg ? msg : fmt);
        end_line(&sb);
}

void cp_log_kv(const cp_log_ctx *ctx, cp_log_level level, const char *msg, ...) {
        cp_strbuf sb;
        va_list ap;

        if (!cp_log_enabled(level))
                return;
        cp_strbuf_init(&sb);
        begin_line(&sb, ctx, level, msg);
        va_start(ap, msg);
        for (;;) {
                const char *k = va_arg(ap, const char *);
                if (!k)
                        break;
                const char *v = va_arg(ap, const char *);
                add_field(&sb, k, v);
        }
        va_end(ap);
        end_line(&sb);
}

int cp_log_error(const cp_log_ctx *ctx, int r, const cp_error *err, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        va_list ap;
        char code[16];

        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        if (err && err->code)
                r = err->code;
        if (!cp_log_enabled(CP_LOG_ERROR))
                return r;
        (void) snprintf(code, sizeof code, "%d", r);

        cp_strbuf sb;
        cp_strbuf_init(&sb);
        begin_line(&sb, ctx, CP_LOG_ERROR, msg ? msg : fmt);
        if (err && err->message[0])
                add_field(&sb, "error", err->message);
        else
                add_field(&sb, "error", strerror(r < 0 ? -r : r));
        if (err && err->sqlstate[0])
                add_field(&sb, "sqlstate", err->sqlstate);
        if (err && err->detail[0])
                add_field(&sb, "detail", err->detail);
        if (err && err->hint[0])
                add_field(&sb, "hint", err->hint);
        end_line(&sb);
        return r;
}
