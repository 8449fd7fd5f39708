-- 0011_mspapi: the MSP account of an event written by an MSP user acting
-- inside a tenant (issue 13, REST ?account=).
--
-- A request acting inside a tenant sets the transaction-local setting
-- netbird_cp.initiator_account_id to the MSP account (common/api/api-msp.c,
-- api_msp_enter); every event the transaction inserts without naming the
-- column then records it, whichever code writes the event. Outside such a
-- transaction the setting is unset or '' and the column stays NULL.
ALTER TABLE events ALTER COLUMN initiator_account_id
    SET DEFAULT NULLIF(current_setting('netbird_cp.initiator_account_id', true), '');
