/* HTTP/2 layer of a flow: placeholder until the nghttp2 relay is wired (issue 7). */
#include "app.h"

struct app *app_h2_new(const struct app_env *env)
{
    (void)env;
    return NULL;
}
void app_h2_free(struct app *a)
{
    (void)a;
}
int app_h2_input(struct app *a, unsigned side, const char *p, size_t n)
{
    (void)a, (void)side, (void)p, (void)n;
    return SOTH_E_STATE;
}
int app_h2_eof(struct app *a, unsigned side, bool reset)
{
    (void)a, (void)side, (void)reset;
    return SOTH_E_STATE;
}
void app_h2_abort(struct app *a, enum soth_outcome outcome)
{
    (void)a, (void)outcome;
}
int app_h2_hold(struct app *a, unsigned side, bool hold)
{
    (void)a, (void)side, (void)hold;
    return 0;
}
bool app_h2_want_write(const struct app *a, unsigned side)
{
    (void)a, (void)side;
    return false;
}
int app_h2_shutdown(struct app *a)
{
    (void)a;
    return 0;
}
enum soth_close_reason app_h2_close_reason(const struct app *a)
{
    (void)a;
    return SOTH_CLOSE_RELAY_ERROR;
}
