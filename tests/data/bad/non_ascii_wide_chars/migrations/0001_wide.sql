-- 🎉 emoji are four bytes, 日本 three, é two
CREATE TABLE été (
    note text DEFAULT '日本 🎉' CHECK note <> ''
);
