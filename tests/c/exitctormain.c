/* Links libexitctor.so: its constructor exits before main runs. */
#include <stdio.h>
int exitctor_never(void);
int main(void) {
    printf("main ran %d\n", exitctor_never());
    return 0;
}
