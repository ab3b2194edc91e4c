/* Built twice: a public library and a secret one of the same name. */
#ifndef WHO
#define WHO "public"
#endif
const char *who(void) { return WHO; }
