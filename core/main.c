#include "soth/base.h"
