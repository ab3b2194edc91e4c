/* Blocks in a host call (poll_oneoff), where epoch interruption cannot reach. */
#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("sleeping\n");
    fflush(stdout);
    sleep(60);
    printf("woke up\n");
    return 0;
}
