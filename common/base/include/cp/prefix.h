/*
 * cp/prefix.h: lists of IPv4/IPv6 addresses and prefixes written as text
 * ("10.0.0.0/8, ::1/128, 192.0.2.7"), and the membership test. Used where
 * an operator names networks it trusts (--trusted-proxies): the config
 * check and the gRPC real-IP reader parse with the same code.
 *
 * A bare address is a full-length prefix; host bits beyond the prefix
 * length are ignored by the match. Items are separated by commas and/or
 * spaces. A list is owned by its caller (cp_prefix_list_release); it is
 * immutable after parsing, so any number of threads may test it.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "cp/error.h"

typedef struct cp_prefix {
        int family;                     /* AF_INET or AF_INET6 */
        unsigned char addr[16];
        unsigned bits;
} cp_prefix;

typedef struct cp_prefix_list {
        cp_prefix *p;
        size_t n;
} cp_prefix_list;

/* One item: len bytes of s. false when it is not an address or prefix. */
bool cp_prefix_parse(const char *s, size_t len, cp_prefix *ret);

/* The whole list (NULL or "" is the empty list). -EINVAL with
 * "\"ITEM\" is not an IP address or prefix" on the first bad item, and
 * *ret left empty. */
int cp_prefix_list_parse(const char *list, cp_prefix_list *ret, cp_error *reterr);
void cp_prefix_list_release(cp_prefix_list *l);

/* Whether the address text a (no prefix length, no port) lies inside one
 * of l's prefixes. */
bool cp_prefix_list_contains(const cp_prefix_list *l, const char *a);
