/* A run that is provably in progress until the test lets it end: it says
   "waiting" (flushed, so a test reading its stdout knows the guest is
   running), then exits with the number on the first line of stdin. */
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    printf("waiting\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 99;
    printf("got %s", line);
    return atoi(line);
}
