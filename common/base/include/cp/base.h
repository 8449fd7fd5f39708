/*
 * cp/base.h: the first include of every .c file in this project.
 *
 * It pulls in the C library headers nearly every file needs, our small
 * macro and allocation helpers, and finally cp/banned.h, which must stay
 * last so that system headers still see the real declarations.
 */
#pragma once

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cp/macro.h"
#include "cp/alloc.h"
#include "cp/banned.h"
