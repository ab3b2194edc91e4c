/* main returns 0, then libexitdtor.so's destructor calls exit(4). */
#include <stdio.h>
int exitdtor_value(void);
int main(void) {
    printf("main value=%d\n", exitdtor_value());
    return 0;
}
