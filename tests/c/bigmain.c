/* Reads one byte of libbigdata.so's 4 MiB table. */
#include <stdio.h>
extern int big_at(int);
int main(void) {
    printf("big_at(2) = %d\n", big_at(2));
    return big_at(2) == 3 ? 0 : 1;
}
