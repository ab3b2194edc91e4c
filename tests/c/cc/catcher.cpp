/* Another library catching by type what libthrower throws. */
#include "apperror.h"

extern "C" int catcher_catch(int code) {
    try {
        thrower_throw(code);
    } catch (const AppError &e) {
        return e.code;
    }
    return -1;
}
