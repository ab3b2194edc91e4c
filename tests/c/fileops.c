/* What a hostile guest tries with the directories it was given:
 * fileops read PATH | write PATH | list DIR | stdin. Prints OK:... or ERR:... */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *op = argv[1];
    if (!strcmp(op, "stdin")) {
        char buf[256] = {0};
        size_t n = fread(buf, 1, sizeof buf - 1, stdin);
        printf(n ? "OK:%s\n" : "ERR:empty%s\n", buf);
        return 0;
    }
    if (argc < 3) return 2;
    const char *path = argv[2];
    if (!strcmp(op, "read")) {
        FILE *f = fopen(path, "r");
        if (!f) { printf("ERR:%s\n", strerror(errno)); return 1; }
        char buf[256] = {0};
        fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        printf("OK:%s\n", buf);
        return 0;
    }
    if (!strcmp(op, "write")) {
        FILE *f = fopen(path, "w");
        if (!f) { printf("ERR:%s\n", strerror(errno)); return 1; }
        fputs("planted\n", f);
        fclose(f);
        printf("OK:written\n");
        return 0;
    }
    if (!strcmp(op, "list")) {
        DIR *d = opendir(path);
        if (!d) { printf("ERR:%s\n", strerror(errno)); return 1; }
        struct dirent *e;
        printf("OK:");
        while ((e = readdir(d))) printf("%s,", e->d_name);
        printf("\n");
        closedir(d);
        return 0;
    }
    return 2;
}
