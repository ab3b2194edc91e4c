#include <setjmp.h>
#include <stdio.h>

void sj_fail(jmp_buf *where, int code);
int sj_protect(void (*body)(jmp_buf *));

static int depth;

static void deep(jmp_buf *jb, int n) {
    depth = n;
    if (n == 0) sj_fail(jb, 42);
    deep(jb, n - 1);
}

static void body(jmp_buf *jb) { sj_fail(jb, 7); }

int main(void) {
    jmp_buf jb;
    volatile int rounds = 0;
    int code = setjmp(jb);
    rounds++;
    if (code == 0) deep(&jb, 5);
    printf("program setjmp: code %d after %d rounds, depth %d\n", code, rounds, depth);
    printf("library setjmp: code %d\n", sj_protect(body));
    return 0;
}
