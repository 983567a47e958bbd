#include "soth/base.h"
int main(void)
{
    return 0;
}
