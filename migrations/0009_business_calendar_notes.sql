-- Free-text notes shown to agents ("Öffnungszeiten", "horario de atención", ...).
ALTER TABLE business_calendars ADD COLUMN notes text;

COMMENT ON COLUMN business_calendars.notes IS 'Notizen für das Team; shown to agents';
