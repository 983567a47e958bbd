#include "soth/core.h"

int main(int argc, char **argv)
{
    return soth_cli_main(argc, argv);
}
