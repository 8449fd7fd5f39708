/*
 * cp/banned.h: functions that must not be used in this code base
 * (after git's banned.h). Included last by cp/base.h.
 *
 * Use snprintf/cp_strbuf instead of the string functions, and the _r
 * variants of the time functions.
 */
#pragma once

#define CP_BANNED(func) sorry_##func##_is_banned_in_this_project

#undef strcpy
#define strcpy(x, y) CP_BANNED(strcpy)
#undef strcat
#define strcat(x, y) CP_BANNED(strcat)
#undef strncpy
#define strncpy(x, y, n) CP_BANNED(strncpy)
#undef sprintf
#define sprintf(...) CP_BANNED(sprintf)
#undef vsprintf
#define vsprintf(...) CP_BANNED(vsprintf)
#undef strtok
#define strtok(x, y) CP_BANNED(strtok)
#undef gmtime
#define gmtime(t) CP_BANNED(gmtime)
#undef localtime
#define localtime(t) CP_BANNED(localtime)
#undef ctime
#define ctime(t) CP_BANNED(ctime)
#undef asctime
#define asctime(t) CP_BANNED(asctime)
