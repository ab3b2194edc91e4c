/* A library that longjmps back into its caller's setjmp (Lua's error
 * handling, Unity's TEST_PROTECT), and one that sets its own jump point
 * around a callback from the program. */
#include <setjmp.h>

void sj_fail(jmp_buf *where, int code) { longjmp(*where, code); }

int sj_protect(void (*body)(jmp_buf *)) {
    jmp_buf here;
    int code = setjmp(here);
    if (code == 0) {
        body(&here);
        return 0;
    }
    return code;
}
