-- Ünïcödé description
CREATE INDEX idx_café ON café (naïve);
