/* WASI through the dynamic libc: args, env, stdin/stdout/stderr, files, exit code. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("arg%d=%s\n", i, argv[i]);
    const char *g = getenv("GREETING");
    printf("GREETING=%s\n", g ? g : "(unset)");
    char line[256];
    if (fgets(line, sizeof line, stdin)) {
        for (char *c = line; *c; c++) *c = (char)toupper((unsigned char)*c);
        printf("stdin=%s", line);
    }
    fprintf(stderr, "to stderr\n");
    FILE *in = fopen("/data/input.txt", "r");
    if (in) {
        char buf[128] = {0};
        fread(buf, 1, sizeof buf - 1, in);
        fclose(in);
        printf("input=%s", buf);
    } else {
        printf("input=(cannot open)\n");
    }
    FILE *out = fopen("/data/output.txt", "w");
    if (out) {
        fprintf(out, "written by the guest\n");
        fclose(out);
    }
    return argc > 1 ? atoi(argv[argc - 1]) : 0;
}
