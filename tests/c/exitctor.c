/* A library whose constructor calls exit(3): the run ends with status 3. */
#include <stdio.h>
#include <stdlib.h>
int exitctor_never(void) { return 1; }
__attribute__((constructor)) static void exitctor_init(void) {
    printf("exitctor ctor\n");
    exit(3);
}
