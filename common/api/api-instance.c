/*
 * instance: not written yet (a route table with no routes).
 */
#include "api-int.h"

const api_route api_instance_routes[] = {
        { NULL },
};
