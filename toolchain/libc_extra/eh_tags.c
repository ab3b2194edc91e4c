/* Part of wasmrun's libc.so: makes libc.so import both exception tags.
 *
 * Wasm exception handling matches a throw to a catch by tag identity, so
 * every module must use the same `__cpp_exception` and `__c_longjmp` tags.
 * wasmrun creates them once per instance set for the modules that import
 * them (env.__cpp_exception, env.__c_longjmp); no module defines them.
 * libc.so imports `__c_longjmp` through the setjmp runtime; this function
 * makes it import `__cpp_exception` as well, so both tags exist from the
 * start of every program, before any C++ library is dlopen'ed.
 * Never called: throwing through it would need a C++ exception object. */

void __wasmrun_throw_cpp_exception(void *exception_object) {
    __builtin_wasm_throw(0, exception_object);
}
