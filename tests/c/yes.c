/* Like yes(1): "y" lines until something stops it. It ignores write
   errors, as most C programs do: only SIGPIPE (or a timeout) ends it. */
#include <stdio.h>
int main(void) {
    for (;;) fputs("y\n", stdout);
}
