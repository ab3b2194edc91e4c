#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) static void crash(int depth) {
    if (depth == 0) __builtin_trap();
    crash(depth - 1);
    printf("unreachable\n");
}
int main(int argc, char **argv) {
    printf("before trap\n");
    fflush(stdout);
    crash(argc);
    return 0;
}
