

-- same name, other table
CREATE INDEX IDX_BC_ACTIVE ON calendar_routing_rules (is_active);
