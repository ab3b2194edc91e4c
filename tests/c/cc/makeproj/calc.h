int add(int a, int b);
int mul(int a, int b);
extern const char *mul_origin;
