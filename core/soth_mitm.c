/* soth-mitm: the program entry point; everything else is soth_cli_main (core/cli.c). */
#include "soth/core.h"

int main(int argc, char **argv)
{
    return soth_cli_main(argc, argv);
}
