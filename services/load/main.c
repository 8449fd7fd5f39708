/*
 * netbird-load: simulated NetBird agents (README.md). Parses the command
 * line and runs the load; the engine lives in load-core.
 *
 * Exit codes: 0 every peer reached its goal (a Sync stream, or a Login
 * with --no-sync) without errors; 1 otherwise; 2 usage errors.
 */
#include "cp/base.h"
#include "load.h"

int main(int argc, char **argv) {
        load_opts o;
        int r = load_opts_parse(&o, argc, argv);

        if (r < 0)
                return 2;
        if (r > 0)
                return 0;
        return load_run(&o);
}
