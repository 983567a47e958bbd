soth_add_fuzz(policy_glob LIBS soth_policy)
