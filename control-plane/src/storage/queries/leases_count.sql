SELECT COUNT(*) FROM partition_leases WHERE partition < $1
