-- schemad:no-transaction
COMMIT;
VACUUM businesses;
