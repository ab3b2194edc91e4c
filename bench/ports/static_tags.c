/* For the statically linked reference builds only: a static program has no
 * runtime-made tags to import, so it defines the setjmp tag itself (zig's
 * wasi-libc throws __c_longjmp but never defines it). Dynamically linked
 * modules import it instead and wasmrun creates it once per program. */
__asm__(".globl __c_longjmp\n.tagtype __c_longjmp i32\n__c_longjmp:\n");
